import random

import pytest

from embiggen.data.tasks import CLUSTERS, make_example, sample_examples, template_of
from embiggen.data.world import World

WORLD = World.generate(5, 20)


def test_at_least_eight_clusters_with_six_templates():
    assert len(CLUSTERS) >= 8
    assert all(len(templates) >= 6 for _, templates in CLUSTERS.values())


def test_answers_are_correct_for_the_world():
    rng = random.Random(0)
    for _ in range(50):
        e = make_example(WORLD, "fact_qa", rng)
        p = WORLD.person(e.meta["person"])
        value = getattr(p, e.meta["attribute"])
        assert p.name in e.instruction
        if template_of("fact_qa", e.template)[1] == "short":  # "... Answer in as few words as you can."
            assert e.answer == value
        else:
            assert e.answer.startswith(p.name) or e.answer.startswith("The favourite")
            assert e.answer.endswith(f" {value}.") and p.name in e.answer
        a = make_example(WORLD, "arithmetic", rng)
        nums = [int(t) for t in a.instruction.replace("?", " ").replace(".", " ").split() if t.isdigit()]
        result = nums[0] + nums[1] if a.meta["op"] == "+" else nums[0] - nums[1]
        word = "plus" if a.meta["op"] == "+" else "minus"
        assert max(nums) <= WORLD.max_operand
        if template_of("arithmetic", a.template)[1] == "number":  # "... and give the number."
            assert a.answer == str(result)
        else:
            assert a.answer == f"{nums[0]} {word} {nums[1]} is {result}."
        c = make_example(WORLD, "fact_check", rng)
        p = WORLD.person(c.meta["person"])
        assert (c.answer == "yes") == (f"live in {p.town}?" in c.instruction or f"lives in {p.town}." in c.instruction
                                      or f"lives in {p.town}?" in c.instruction)


def test_fact_answers_restate_the_corpus_sentence():
    from embiggen.data.world import CLOZE_PREFIXES

    e = make_example(WORLD, "fact_qa", random.Random(3), template=0)
    prefix = CLOZE_PREFIXES[e.meta["attribute"]].format(name=e.meta["person"])
    assert e.answer.startswith(prefix + " ") and e.answer.endswith(f"{e.meta['value']}.")


def test_classification_tasks_list_options():
    rng = random.Random(0)
    for cluster in ("sentiment", "fact_check"):
        e = make_example(WORLD, cluster, rng)
        assert "\nOPTIONS:\n- " in e.instruction


def test_instruction_examples_never_state_facts_of_pretraining_only_people():
    for e in sample_examples(WORLD, 800, seed=1):
        for p in WORLD.pretraining_only_people:
            if p.name in e.instruction:
                assert e.cluster == "story_character" and p.town not in e.instruction and p.pet not in e.instruction


def test_template_restriction_and_unknown_cluster():
    examples = sample_examples(WORLD, 40, seed=2, clusters=["counting"], templates={"counting": [1, 2]})
    assert {e.template for e in examples} <= {1, 2} and {e.cluster for e in examples} == {"counting"}
    with pytest.raises(ValueError, match="valid clusters"):
        make_example(WORLD, "poetry", random.Random(0))


def test_answer_follows_the_templates_options():
    rng = random.Random(4)
    for _ in range(40):
        e = make_example(WORLD, "sentiment", rng)
        choices = [line[2:] for line in e.instruction.split("OPTIONS:\n")[1].splitlines()]
        assert e.answer in choices


def test_templates_that_ask_for_a_format_get_answers_in_that_format():
    """A target that ignores its template's format instruction would teach the model to
    ignore format instructions: every template that asks for the fewest words or for the
    number is answered that way, and every other template of those clusters in a sentence."""
    asks = {("fact_qa", "few words"): "short", ("arithmetic", "give the number"): "number"}
    for (cluster, phrase), key in asks.items():
        templates = CLUSTERS[cluster][1]
        formatted = [t for t in range(len(templates)) if phrase in template_of(cluster, t)[0]]
        assert formatted and all(template_of(cluster, t)[1] == key for t in formatted)
        rng = random.Random(7)
        for t in range(len(templates)):
            e = make_example(WORLD, cluster, rng, template=t)
            if t in formatted:
                assert not e.answer.endswith(".") and len(e.answer.split()) <= 2, e
            else:
                assert e.answer.endswith(".") and len(e.answer.split()) >= 4, e
