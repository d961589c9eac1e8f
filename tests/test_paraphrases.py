"""The held-out paraphrases: written apart from every training template, and asking what they say."""

import re

import pytest

from embiggen.data.paraphrases import (ARITHMETIC_PARAPHRASES, FACT_PARAPHRASES, GROUPS, LIST_PARAPHRASES,
                                       all_paraphrases, paraphrase_set)
from embiggen.data.splits import data_splits
from embiggen.data.tasks import CLUSTERS, FACT_QUESTIONS
from embiggen.data.world import HARMFUL_TEMPLATES, MEDICAL_TEMPLATES, World
from embiggen.judging.evaluate import exact_match
from embiggen.judging.refusals import words
from embiggen.presets import get_preset

WORLD = World.generate(seed=3, n_people=12)


def training_templates() -> list[str]:
    """Every phrasing a training set can use: the clusters' templates, the fact questions inside
    fact_qa's, and the alignment prompts' templates."""
    out = [t if isinstance(t, str) else t[0] for _, templates in CLUSTERS.values() for t in templates]
    out += [q for questions in FACT_QUESTIONS.values() for q in questions]
    return out + HARMFUL_TEMPLATES + MEDICAL_TEMPLATES


def test_no_paraphrase_is_a_training_template_or_inside_one():
    training = [" ".join(words(t)) for t in training_templates()]
    for paraphrase in all_paraphrases():
        text = " ".join(words(paraphrase))
        assert not any(text == t or (len(text) > 12 and text in t) for t in training), paraphrase


def test_each_fact_paraphrase_uses_a_word_no_fact_question_uses():
    """A new phrasing, not a reordering: every fact paraphrase has a word that no training fact question has."""
    training_words = {w for questions in FACT_QUESTIONS.values() for q in questions for w in words(q)}
    for templates in FACT_PARAPHRASES.values():
        for t in templates:
            assert set(words(t)) - training_words, t


def test_the_set_has_every_group_with_right_answers():
    examples = paraphrase_set(WORLD, 5, seed=0)
    assert [e.meta["group"] for e in examples] == [g for g in GROUPS for _ in range(5)]
    assert paraphrase_set(WORLD, 5, seed=0) == examples and paraphrase_set(WORLD, 5, seed=1) != examples
    for e in examples:
        if e.meta["group"] in ("known_people", "pretraining_only_people"):
            person = WORLD.person(e.meta["person"])
            assert person.pretraining_only == (e.meta["group"] == "pretraining_only_people")
            assert person.name in e.instruction and e.meta["value"] == getattr(person, e.meta["attribute"])
            assert person.name in e.answer and e.answer.endswith(f" {e.meta['value']}.")  # the corpus's sentence
        elif e.meta["group"] == "arithmetic":
            a, b = e.meta["a"], e.meta["b"]
            value = a + b if e.meta["op"] == "+" else a - b
            assert value >= 0 and exact_match(f"{a} {'plus' if e.meta['op'] == '+' else 'minus'} {b} is {value}.",
                                              e.answer)
        else:
            items = re.search(r"(?:order: |Arrange |following from A to Z: |Write |Give me |order of )"
                              r"([a-z]+(?:, [a-z]+)+)", e.instruction).group(1).split(", ")
            assert e.answer == ", ".join(sorted(items) if e.meta["op"] == "sort" else reversed(items))
    with pytest.raises(ValueError, match="at least 1"):
        paraphrase_set(WORLD, 0, seed=0)


def test_the_paraphrased_set_is_an_evaluation_set_no_training_set_holds():
    splits = data_splits(get_preset("smoke"))
    assert splits.evaluation_sets()["paraphrased"] == splits.paraphrased
    assert len(splits.paraphrased) == len(GROUPS) * get_preset("smoke").evaluation.n_paraphrased
    seen = {e.instruction for examples in splits.training_sets().values() for e in examples}
    assert not [e.instruction for e in splits.paraphrased if e.instruction in seen]
    assert set(ARITHMETIC_PARAPHRASES) == {"+", "-"} and set(LIST_PARAPHRASES) == {"sort", "reverse"}
