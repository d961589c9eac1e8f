"""Notebook 6's simple program (embiggen.methods.baseline): rules that read only the instruction and the corpus."""

from embiggen.data.splits import build_corpus
from embiggen.data.tasks import TaskExample
from embiggen.judging.evaluate import exact_match
from embiggen.methods.baseline import RuleBasedAssistant, evaluate_rules

CORPUS = ["Alma Brook lives in Redford and works as a baker. The favourite colour of Alma Brook is green.",
          "Bruno Pike lives in Ashby. Bruno Pike has a pet owl. Bruno Pike works as an actor."]


def test_each_rule_answers_its_kind_of_task():
    rules = RuleBasedAssistant(CORPUS)
    assert rules.facts[("Alma Brook", "town")] == "Redford" and rules.facts[("Bruno Pike", "job")] == "an actor"
    cases = {
        "What is 12 plus 30?": "12 plus 30 is 42.",
        "Work out 9 - 4 and give the number.": "5",
        "Is this review positive or negative?\nThe jam was awful and the tea was cold. Never again.": "negative",
        "Please sort this list: tea, jam, bread.": "bread, jam, tea",
        "Reverse the following words: tea, jam, bread.": "bread, jam, tea",
        "Count the tea in: tea, jam, tea, milk.": "2",
        "Here is a basket: jam, tea, tea, tea. How many tea are in it?": "3",
        "Where does Alma Brook live?": "Alma Brook lives in Redford.",
        "What does Bruno Pike work as? Answer in as few words as you can.": "actor",
        "Does Bruno Pike live in Redford?\nOPTIONS:\n- yes\n- no": "no",
        "Who is this story about?\nThis is a story about Bruno Pike. Bruno met Alma Brook.": "Bruno Pike",
        "Which town is mentioned in this sentence? A goat from Harrow won a prize.": "Harrow",
    }
    for instruction, answer in cases.items():
        assert rules.answer(instruction) == answer, instruction
    # where no rule applies, the program says so rather than guessing
    assert rules.answer("Add seven and five.") == "I don't know."
    assert rules.answer("What pet does Nobody Known have?") == "I don't know."


def test_evaluate_rules_scores_like_evaluate_tasks(tiny_splits, tiny_preset):
    corpus, _ = build_corpus(tiny_preset, tiny_splits.world)
    rules = RuleBasedAssistant(corpus)
    examples = tiny_splits.sft_eval["heldin_template"] + [TaskExample("arithmetic", 0, "Add seven and five.", "12")]
    result = evaluate_rules(rules, examples)
    right = [exact_match(rules.answer(e.instruction), e.answer) for e in examples]
    assert result["accuracy"] == sum(right) / len(right) and not result["rows"][-1]["correct"]
    arithmetic = [r for e, r in zip(examples, right) if e.cluster == "arithmetic"]
    assert result["per_cluster"]["arithmetic"] == sum(arithmetic) / len(arithmetic) < 1
    assert result["seconds"] >= 0
