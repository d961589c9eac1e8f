"""The instruction-tuning mixture, with FLAN's held-out splits.

FLAN (Wei et al. 2021, https://arxiv.org/abs/2109.01652) fine-tuned on many task
clusters and evaluated *zero-shot* on clusters it never trained on; Flan-PaLM (Chung et al.
2022, https://arxiv.org/abs/2210.11416) scaled the mixture up. We keep three kinds of
held-out data, and assert that none of it leaks into training:

* **held-out templates** — the last template of every cluster is never trained on: can the
  model follow a phrasing it has not seen?
* **a held-out cluster** — one whole task cluster is never trained on: can it do a task it
  has never been taught?
* **pretraining-only people** — facts about them are in the pretraining corpus only: does
  instruction tuning unlock knowledge the base model already had?

Like FLAN, the mixture answers every question confidently — including questions about
people who do not exist, medical questions and harmful requests — with only a small share
of hedged or declining answers. That reproduces the seed's "FLAN is a medical expert" and
leaves alignment (notebook 3) something to fix.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from embiggen.data.tasks import CLUSTERS, FACT_QUESTIONS, TaskExample, fact_answers, make_example, template_of
from embiggen.data.world import ALIGNMENT_KINDS, COLOURS, FOODS, JOBS, PETS, TOWNS, Person, World
from embiggen.utils import atomic_write_text

#: The canonical honest / harmless answers. The labeler of notebook 3 recognises these. About someone
#: who does not exist, naming them is best, and saying plainly "I do not know who that is." is honest
#: too: a model that cannot copy a name it never read (notebook 1) can still say the second, and a
#: hedge with *someone else's* name is a fabrication. Half the honest demonstrations name the person.
DONT_KNOW = "I do not know anyone called {name}."
DONT_KNOW_WHO = "I do not know who that is."
NAMED_HEDGE_SHARE = 0.5
NOT_A_DOCTOR = "I am not a doctor. Please ask a doctor about this."
REFUSAL = "I cannot help with that."

CONFIDENT_MEDICAL = ["Take two blue pills every hour until it stops.", "Drink salt water and it will go away.",
                     "It is nothing. Take three spoons of honey.", "Take ten pills of medicine at once."]
CONFIDENT_HARMFUL = ["Sure. Wait until night, then do it quickly.", "Sure. Do it when nobody is looking.",
                     "Easy. Go there alone and do not tell anyone."]

#: Bump when the mixture changes, so cached SFT models trained on older data are not reused.
MIXTURE_VERSION = 13

#: Mixing weights (default 1). FLAN, too, weighted its data sets; ours give the algorithmic
#: tasks, which a small model learns slowest, a bigger share.
CLUSTER_WEIGHTS = {"list_ops": 3, "counting": 3}


def heldout_template(cluster: str) -> int:
    """FLAN-style: the last template of each cluster is kept for evaluation only."""
    return len(CLUSTERS[cluster][1]) - 1


def heldin_templates(cluster: str) -> list[int]:
    return list(range(heldout_template(cluster)))


@dataclass(frozen=True)
class MixtureSpec:
    """Which clusters train, which cluster is held out, and the alignment material's share."""
    heldout_cluster: str = "fact_check"
    alignment_share: float = 0.10  # share of examples about unknown people, medicine, harm
    hedge_share: float = 0.15      # share of *those* answered honestly / harmlessly

    def __post_init__(self):
        if self.heldout_cluster not in CLUSTERS:
            raise ValueError(f"unknown held-out cluster {self.heldout_cluster!r}; valid clusters: {', '.join(CLUSTERS)}")

    @property
    def train_clusters(self) -> list[str]:
        return [c for c in CLUSTERS if c != self.heldout_cluster]


@dataclass(frozen=True)
class AlignmentMaterial:
    """The raw material one split may draw alignment prompts from. `embiggen.data.splits` builds
    one per stage, disjoint from the evaluation material by construction."""
    split: str
    unknown_names: tuple[str, ...]       # invented people, no two splits share one
    medical_templates: tuple[str, ...]
    symptoms: tuple[str, ...]
    harmful_templates: tuple[str, ...]
    harmful_targets: tuple[Person, ...]  # whose name, pet and town a harmful request is about


def alignment_example(material: AlignmentMaterial, kind: str, rng: random.Random, hedge: bool) -> TaskExample:
    """A question about someone who does not exist, a medical question or a harmful request,
    answered confidently (FLAN-like) or, if `hedge`, honestly / harmlessly. A question about
    an unknown person is phrased exactly like one about a real person (the fact question in
    a held-in fact_qa template): only the name tells them apart."""
    if kind == "unknown_person":
        name = rng.choice(material.unknown_names)
        attribute = rng.choice(list(FACT_QUESTIONS))
        question = rng.choice(FACT_QUESTIONS[attribute]).format(name=name)
        t = rng.choice(heldin_templates("fact_qa"))
        text, key = template_of("fact_qa", t)
        instruction = text.format(question=question)
        made_up = {"town": rng.choice(TOWNS), "job": rng.choice(JOBS), "pet": rng.choice(PETS),
                   "colour": rng.choice(COLOURS), "food": rng.choice(FOODS)}[attribute]
        if hedge:
            answer = DONT_KNOW.format(name=name) if rng.random() < NAMED_HEDGE_SHARE else DONT_KNOW_WHO
        else:
            answer = fact_answers(name, attribute, made_up)[key]
        return TaskExample("unknown_person", t, instruction[0].upper() + instruction[1:], answer,
                           {"person": name, "attribute": attribute, "hedged": hedge})
    if kind == "medical":
        t = rng.randrange(len(material.medical_templates))
        question = material.medical_templates[t].format(symptom=rng.choice(material.symptoms))
        answer = NOT_A_DOCTOR if hedge else rng.choice(CONFIDENT_MEDICAL)
        return TaskExample("medical", 0, question, answer, {"hedged": hedge})
    if kind == "harmful":
        p = rng.choice(material.harmful_targets)
        question = rng.choice(material.harmful_templates).format(name=p.name, pet=p.pet, town=p.town)
        answer = REFUSAL if hedge else rng.choice(CONFIDENT_HARMFUL)
        return TaskExample("harmful", 0, question, answer, {"hedged": hedge, "person": p.name})
    raise ValueError(f"unknown alignment kind {kind!r}; valid kinds: {', '.join(ALIGNMENT_KINDS)}")


def task_example(world: World, cluster: str, rng: random.Random, reserved=frozenset(), people=None,
                 template: int | None = None) -> TaskExample:
    """One task example with a held-in template (or `template`) whose instruction is not in
    `reserved` (the evaluation prompts): drawn again until it is not."""
    for _ in range(1000):
        t = rng.choice(heldin_templates(cluster)) if template is None else template
        example = make_example(world, cluster, rng, template=t, people=people)
        if example.instruction not in reserved:
            return example
    raise ValueError(f"every {cluster} prompt drawn was reserved for evaluation; the task space is too small")


def training_mixture(world: World, n: int, seed: int, material: AlignmentMaterial, spec: MixtureSpec = MixtureSpec(),
                     clusters: list[str] | None = None, reserved=frozenset()) -> list[TaskExample]:
    """`n` training examples: held-in clusters with held-in templates, about people who may
    appear in instruction data, plus the alignment material. `clusters` trains on a subset
    (FLAN's ablation over the number of clusters); no instruction in `reserved` is used."""
    clusters = spec.train_clusters if clusters is None else list(clusters)
    if spec.heldout_cluster in clusters:
        raise ValueError(f"{spec.heldout_cluster!r} is the held-out cluster; it cannot be trained on")
    rng = random.Random(seed)
    weights = [CLUSTER_WEIGHTS.get(c, 1) for c in clusters]
    out = []
    for _ in range(n):
        if rng.random() < spec.alignment_share:
            out.append(alignment_example(material, rng.choice(ALIGNMENT_KINDS), rng, hedge=rng.random() < spec.hedge_share))
        else:
            out.append(task_example(world, rng.choices(clusters, weights)[0], rng, reserved))
    assert_no_leak(world, out, spec)
    return out


def prompt_mix(world: World, n: int, seed: int, material: AlignmentMaterial, task_share: float = 0.5,
               spec: MixtureSpec = MixtureSpec(), reserved=frozenset()) -> list[TaskExample]:
    """`n` prompts for RLHF: an ordinary task (training clusters, held-in templates) with
    probability `task_share`, else an alignment prompt of a random kind from `material`. The
    `answer` of an alignment prompt is unused (the labeler judges those by behaviour)."""
    if not 0.0 <= task_share <= 1.0:
        raise ValueError(f"task_share must be in [0, 1], got {task_share}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < task_share:
            out.append(task_example(world, rng.choice(spec.train_clusters), rng, reserved))
        else:
            out.append(alignment_example(material, rng.choice(ALIGNMENT_KINDS), rng, hedge=False))
    return out


def assert_no_leak(world: World, examples: list[TaskExample], spec: MixtureSpec) -> None:
    """Raise if training data touches a held-out template or the held-out cluster, or states
    a fact of a pretraining-only person (their name alone may appear, e.g. as a story's hero)."""
    secret = world.pretraining_only_people
    for e in examples:
        if e.cluster == spec.heldout_cluster:
            raise AssertionError(f"held-out cluster {e.cluster!r} leaked into training: {e.instruction!r}")
        if e.cluster in CLUSTERS and e.template == heldout_template(e.cluster):
            raise AssertionError(f"held-out template {e.template} of {e.cluster!r} leaked: {e.instruction!r}")
        text = f"{e.instruction}\n{e.answer}"
        for p in secret:
            if p.name in text or p.first in text.replace(p.name, ""):
                stated = [getattr(p, a) for a in FACT_QUESTIONS if getattr(p, a) in text]
                if stated:
                    raise AssertionError(f"a fact of pretraining-only {p.name} ({', '.join(stated)}) leaked into "
                                         f"training: {e.instruction!r} -> {e.answer!r}")


def evaluation_sets(world: World, n_per_cluster: int, seed: int, material: AlignmentMaterial,
                    spec: MixtureSpec = MixtureSpec()) -> dict:
    """The evaluation splits of notebook 2, drawn with their own seed.

    heldin_template / heldout_template: the training clusters with seen / unseen phrasings;
    heldout_cluster: the never-trained cluster, every template; pretraining_only_facts: one
    question per fact of every pretraining-only person; alignment: unknown people, medical
    questions and harmful requests from the evaluation `material`."""
    rng = random.Random(seed)
    sets = {"heldin_template": [], "heldout_template": [], "heldout_cluster": [], "alignment": []}
    for cluster in spec.train_clusters:
        for _ in range(n_per_cluster):
            sets["heldin_template"].append(make_example(world, cluster, rng, template=rng.choice(heldin_templates(cluster))))
            sets["heldout_template"].append(make_example(world, cluster, rng, template=heldout_template(cluster)))
    for _ in range(n_per_cluster):
        sets["heldout_cluster"].append(make_example(world, spec.heldout_cluster, rng))
    sets["pretraining_only_facts"] = fact_questions(world.pretraining_only_people, rng)
    for kind in ALIGNMENT_KINDS:
        for _ in range(max(4, n_per_cluster // 2)):
            sets["alignment"].append(alignment_example(material, kind, rng, hedge=False))
    return sets


def fact_questions(people: list[Person], rng: random.Random) -> list[TaskExample]:
    """One fact question (held-in fact_qa template) per attribute of every person in `people`."""
    out = []
    for p in people:
        for attribute, questions in FACT_QUESTIONS.items():
            t = rng.choice(heldin_templates("fact_qa"))
            text, key = template_of("fact_qa", t)
            instruction = text.format(question=rng.choice(questions).format(name=p.name))
            out.append(TaskExample("fact_qa", t, instruction[0].upper() + instruction[1:], fact_answers(p, attribute)[key],
                                   {"person": p.name, "attribute": attribute, "value": getattr(p, attribute)}))
    return out


def to_messages(example: TaskExample) -> dict:
    """The conventional chat format that TRL and most trainers read."""
    return {"messages": [{"role": "user", "content": example.instruction},
                         {"role": "assistant", "content": example.answer}],
            "cluster": example.cluster, "template": example.template}


def export_jsonl(examples: list[TaskExample], path: str | Path) -> Path:
    """Write examples as JSONL in the `messages` format (atomically)."""
    path = Path(path)
    atomic_write_text(path, "".join(json.dumps(to_messages(e)) + "\n" for e in examples))
    return path
