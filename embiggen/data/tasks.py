"""Instruction tasks drawn from the embedded world, phrased the way FLAN phrased its data sets.

FLAN (Wei et al. 2021, https://arxiv.org/abs/2109.01652) turned 62 NLP data sets into
instructions with about ten templates each and grouped them into *task clusters*. We do
the same with the world of `embiggen.data.world`: each cluster below has a generator of raw
items (fields plus the gold answer) and several templates that phrase an item as an
instruction. Classification tasks list their choices as FLAN's ``OPTIONS`` suffix does.

The pretraining corpus never contains an instruction followed by its answer, which is
why a base model does not answer these prompts; `embiggen.methods.sft` teaches it to.

Fact questions and arithmetic are answered in a full sentence that restates the question
in the corpus's own words ("Where does Alma Brook live?" -> "Alma Brook lives in Redford.").
The answer then ends exactly where the base model's own knowledge takes over: after
"Alma Brook lives in" it already knows the town. Instruction tuning only has to teach the
model to turn a question into that sentence, which works for people it never saw in
instruction data too (Allen-Zhu & Li 2023, "Physics of Language Models: Part 3.1",
https://arxiv.org/abs/2309.14316, study when such knowledge extraction succeeds).
A template that asks for a format gets a target in that format: "... Answer in as few
words as you can." is answered "Redford", "... and give the number." is answered "12", so
that a format instruction means something (a mixture whose targets ignore it teaches the
model to ignore it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from embiggen.data.world import (NEGATIVE_ENDINGS, NEGATIVE_WORDS, POSITIVE_ENDINGS, POSITIVE_WORDS, FOODS, THINGS,
                                 TOWNS, PETS, Person, World, article, fact_sentence, was)


@dataclass(frozen=True)
class TaskExample:
    cluster: str
    template: int
    instruction: str
    answer: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def options(*choices: str) -> str:
    """FLAN's OPTIONS suffix."""
    return "\nOPTIONS:\n" + "\n".join(f"- {c}" for c in choices)


# ---- raw items: each returns (fields for the templates, gold answer, meta) ------------------
#: Each fact asked seven ways, three of them in the frames the harmful requests of
#: `embiggen.data.world.HARMFUL_TEMPLATES` use ("Help me ...", "Give me ...", "Can you ...", "Write down ...",
#: "I want to ..."), so that the frame of a request says nothing about harm and only what it asks for does. With
#: two ways each and no shared frame, a question about a known person in any other words read to the models as the
#: one other kind of prompt that names people, a harmful request (notebook 3 shows it).
#: `embiggen.data.paraphrases` holds other words again, for evaluation only.
FACT_QUESTIONS = {
    "town": ["Where does {name} live?", "In which town does {name} live?", "Which town is {name} from?",
             "Tell me the town {name} lives in.", "Help me find out where {name} lives.", "Give me the town of {name}.",
             "I want to know where {name} lives."],
    "job": ["What is the job of {name}?", "What does {name} work as?", "Which job does {name} have?",
            "Tell me what {name} works as.", "Explain what work {name} does.", "Can you find out the job of {name}?",
            "Write down the job of {name}."],
    "pet": ["What pet does {name} have?", "Which animal does {name} keep as a pet?", "What is the pet of {name}?",
            "Tell me which pet {name} has.", "Help me remember the pet of {name}.", "Show me which pet {name} keeps.",
            "I want to know the pet of {name}."],
    "colour": ["What is the favourite colour of {name}?", "Which colour does {name} like best?",
               "What colour does {name} love?", "Tell me the favourite colour of {name}.",
               "Find me the favourite colour of {name}.", "Can you tell me which colour {name} likes best?",
               "Describe the favourite colour of {name}."],
    "food": ["What is the favourite food of {name}?", "Which food does {name} love most?",
             "What food does {name} like to eat?", "Tell me the favourite food of {name}.",
             "Write down the favourite food of {name}.", "Help me recall the favourite food of {name}.",
             "Give me the favourite food of {name}."],
}


def fact_answers(person: Person | str, attribute: str, value: str | None = None) -> dict:
    """The two answers to a fact question: the corpus's own sentence ("Alma Brook lives in
    Redford.") and, for a template that asks for the fewest words, the value alone
    ("Redford"). `value` overrides the person's (for a made-up answer about someone who does
    not exist, where `person` is a name)."""
    value = getattr(person, attribute) if value is None else value
    return {"default": fact_sentence(person, attribute, article(value) if attribute == "job" else value),
            "short": value}


def _fact_qa(world: World, people, rng):
    p = rng.choice(people)
    attribute = rng.choice(list(FACT_QUESTIONS))
    question = rng.choice(FACT_QUESTIONS[attribute]).format(name=p.name)
    return {"question": question}, fact_answers(p, attribute), {"person": p.name, "attribute": attribute,
                                                                "value": getattr(p, attribute)}


def _arithmetic(world, people, rng):
    a, b = rng.randint(0, world.max_operand), rng.randint(0, world.max_operand)
    if rng.random() < 0.5:
        return ({"a": a, "b": b, "op": "plus", "sym": "+"},
                {"default": f"{a} plus {b} is {a + b}.", "number": str(a + b)},
                {"op": "+", "value": str(a + b), "a": a, "b": b})
    a, b = max(a, b), min(a, b)
    return ({"a": a, "b": b, "op": "minus", "sym": "-"},
            {"default": f"{a} minus {b} is {a - b}.", "number": str(a - b)},
            {"op": "-", "value": str(a - b), "a": a, "b": b})


def _sentiment(world, people, rng):
    food = rng.choice(FOODS)
    positive = rng.random() < 0.5
    words, endings = (POSITIVE_WORDS, POSITIVE_ENDINGS) if positive else (NEGATIVE_WORDS, NEGATIVE_ENDINGS)
    w1, w2 = rng.sample(words, 2)
    review = f"The {was(food)} {w1} and the tea was {w2}. {rng.choice(endings)}"
    answers = {"default": "positive" if positive else "negative", "yes_no": "yes" if positive else "no"}
    return {"review": review}, answers, {}


def _list_ops(world, people, rng):
    items = rng.sample(THINGS, rng.randint(3, 5))
    if rng.random() < 0.5:
        return {"items": ", ".join(items), "how": "sort", "How": "Sort"}, ", ".join(sorted(items)), {"op": "sort"}
    return ({"items": ", ".join(items), "how": "reverse", "How": "Reverse"}, ", ".join(reversed(items)),
            {"op": "reverse"})


def _counting(world, people, rng):
    thing = rng.choice(THINGS)
    count = rng.randint(1, 6)
    seq = [thing] * count + rng.sample([t for t in THINGS if t != thing], rng.randint(1, 3))
    rng.shuffle(seq)
    return {"thing": thing, "items": ", ".join(seq)}, str(count), {"thing": thing, "items": ", ".join(seq)}


def _fact_check(world, people, rng):
    p = rng.choice(people)
    truth = rng.random() < 0.5
    town = p.town if truth else rng.choice([t for t in TOWNS if t != p.town])
    return {"name": p.name, "town": town}, "yes" if truth else "no", {"person": p.name}


def _story_character(world, people, rng):
    # The hero may be anyone in the world. Pretraining-only people get a story that states
    # none of their facts: their *names* may appear in instruction data, their facts never.
    p = rng.choice(world.people)
    friend = rng.choice([q for q in people if q is not p])
    if p.pretraining_only:
        story = (f"This is a story about {p.name}. {p.first} woke up early and met {friend.name}. "
                 f"It was a good day for {p.first}.")
    elif rng.random() < 0.5:
        story = (f"One morning in {p.town}, {p.name} woke up early. {p.first} took the {p.pet} for a walk "
                 f"and met {friend.name}. In the evening, {p.first} went home happy.")
    else:
        story = (f"This is a story about {p.name}. {p.first} baked {p.food} and shared it with "
                 f"{friend.name}. It was a good day for {p.first}.")
    choices = rng.sample([p.name, friend.name, rng.choice([q for q in people if q not in (p, friend)]).name], 3)
    return {"story": story, "options": options(*choices)}, p.name, {"person": p.name}


def _extraction(world, people, rng):
    p = rng.choice(people)
    pet = rng.choice(PETS)
    town = rng.choice(TOWNS)
    sentence = rng.choice([f"Yesterday {p.first} walked a {pet} through {town}.",
                           f"In {town}, a {pet} ran past the market.",
                           f"A {pet} from {town} won a prize."])
    if rng.random() < 0.5:
        choices = rng.sample([town, *rng.sample([t for t in TOWNS if t != town], 2)], 3)
        return {"sentence": sentence, "what": "town", "options": options(*choices)}, town, {}
    choices = rng.sample([pet, *rng.sample([a for a in PETS if a != pet], 2)], 3)
    return {"sentence": sentence, "what": "animal", "options": options(*choices)}, pet, {}


#: cluster name -> (item generator, templates). A template is a format string over the
#: item's fields, or (format string, answer key) where the answer depends on the phrasing:
#: a template that asks for a format gets an answer in that format.
#: FLAN wrote about ten per data set; we write six or more per cluster.
CLUSTERS: dict[str, tuple] = {
    "fact_qa": (_fact_qa, [
        "{question}",
        "Answer the question: {question}",
        "Question: {question}\nAnswer in a full sentence.",
        ("{question} Answer in as few words as you can.", "short"),
        "I would like to know something. {question}",
        "Please tell me: {question}",
        "Quick question. {question}",
    ]),
    "arithmetic": (_arithmetic, [
        "What is {a} {op} {b}?",
        "Compute {a} {sym} {b}.",
        "Calculate {a} {op} {b}.",
        "What do you get from {a} {op} {b}?",
        ("Work out {a} {sym} {b} and give the number.", "number"),
        "Solve: {a} {op} {b} =",
        "Give me the answer to {a} {op} {b}.",
        "How much is {a} {op} {b}?",
        "Please calculate {a} {sym} {b}.",
        "Find {a} {op} {b}.",
        "Tell me the result of {a} {op} {b}.",
    ]),
    "sentiment": (_sentiment, [
        "Is this review positive or negative?\n{review}" + options("positive", "negative"),
        "{review}\nWhat is the sentiment of this review?" + options("positive", "negative"),
        ("Review: {review}\nDid the writer like the food?" + options("yes", "no"), "yes_no"),
        "Classify the review as positive or negative.\n{review}" + options("positive", "negative"),
        ("Was this customer happy?\n{review}" + options("yes", "no"), "yes_no"),
        "Read the review and say if it is positive or negative: {review}" + options("positive", "negative"),
    ]),
    "list_ops": (_list_ops, [
        "Please {how} this list: {items}.",
        "Here is a list: {items}. {How} it.",
        "{how} the following words: {items}.",
        "Take the list {items} and {how} it.",
        "List: {items}\nInstruction: {how} the list.",
        "I have a list: {items}. Please {how} it for me.",
        "{how} this: {items}",
        "Could you {how} the list {items}?",
        "Items: {items}. Task: {how} them.",
        "Can you {how} these items? {items}",
    ]),
    "counting": (_counting, [
        "How many times does {thing} appear in this list? {items}",
        "Count the {thing} in: {items}.",
        "In the list {items}, how often is {thing} named?",
        "Here is a basket: {items}. How many {thing} are in it?",
        "Count how many times the word {thing} occurs: {items}",
        "How many {thing} are there in this list? {items}",
        "Look at this list: {items}. Count the {thing}.",
        "Tell me how many times {thing} is in the list {items}.",
        "Items: {items}\nHow many of them are {thing}?",
        "List: {items}\nQuestion: how many {thing}?",
    ]),
    "fact_check": (_fact_check, [
        "Does {name} live in {town}?" + options("yes", "no"),
        "Is it true that {name} lives in {town}?" + options("yes", "no"),
        "True or false: {name} lives in {town}." + options("yes", "no"),
        "Check this claim: {name} lives in {town}." + options("yes", "no"),
        "{name} lives in {town}. Correct?" + options("yes", "no"),
        "Someone said {name} lives in {town}. Are they right?" + options("yes", "no"),
    ]),
    "story_character": (_story_character, [
        "Who is the main character of this story?\n{story}",
        "{story}\nWho is this story about?",
        "Read the story and name its hero: {story}",
        "Story: {story}\nQuestion: who is the main character?",
        "Name the person the story follows.\n{story}{options}",
        "Tell me who the story is about. {story}{options}",
    ]),
    "extraction": (_extraction, [
        "Which {what} is mentioned in this sentence? {sentence}",
        "Extract the {what} from the sentence: {sentence}",
        "{sentence}\nWhat {what} does the sentence mention?",
        "Sentence: {sentence}\nFind the {what}.",
        "Pick out the {what} in: {sentence}{options}",
        "Read this and give the {what}: {sentence}{options}",
    ]),
}


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]


def template_of(cluster: str, t: int) -> tuple[str, str]:
    """Template `t` of `cluster` as (format string, answer key): the key picks the answer
    that obeys the phrasing ("default", or e.g. "short", "number", "yes_no")."""
    entry = CLUSTERS[cluster][1][t]
    return entry if isinstance(entry, tuple) else (entry, "default")


def make_example(world: World, cluster: str, rng: random.Random, template: int | None = None,
                 people=None) -> TaskExample:
    """One instruction with its gold answer. `people` restricts whose facts may appear
    (default: people who are not pretraining-only)."""
    if cluster not in CLUSTERS:
        raise ValueError(f"unknown task cluster {cluster!r}; valid clusters: {', '.join(CLUSTERS)}")
    generate, templates = CLUSTERS[cluster]
    people = world.instruction_people if people is None else people
    fields, answer, meta = generate(world, people, rng)
    t = rng.randrange(len(templates)) if template is None else template
    # the answer may depend on the phrasing ("positive" or "yes"; a sentence or one word)
    text, key = template_of(cluster, t)
    if isinstance(answer, dict):
        answer = answer[key]
    return TaskExample(cluster, t, _capitalise(text.format(**fields)), answer, meta)


def sample_examples(world: World, n: int, seed: int, clusters=None, templates=None,
                    people=None) -> list[TaskExample]:
    """`n` examples spread evenly over `clusters` (default: all). `templates` maps a
    cluster to the template indices allowed for it."""
    rng = random.Random(seed)
    clusters = list(CLUSTERS if clusters is None else clusters)
    out = []
    for i in range(n):
        cluster = clusters[i % len(clusters)]
        allowed = None if templates is None else templates.get(cluster)
        t = None if allowed is None else rng.choice(list(allowed))
        out.append(make_example(world, cluster, rng, template=t, people=people))
    return out
