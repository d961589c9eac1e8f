import random

import pytest

from embiggen.tasks import CLUSTERS, make_example, sample_examples
from embiggen.world import World

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
        assert e.answer.startswith(p.name) or e.answer.startswith("The favourite")
        assert e.answer.endswith(f" {value}.") and p.name in e.instruction and p.name in e.answer
        a = make_example(WORLD, "arithmetic", rng)
        nums = [int(t) for t in a.instruction.replace("?", " ").replace(".", " ").split() if t.isdigit()]
        result = nums[0] + nums[1] if a.meta["op"] == "+" else nums[0] - nums[1]
        word = "plus" if a.meta["op"] == "+" else "minus"
        assert a.answer == f"{nums[0]} {word} {nums[1]} is {result}." and max(nums) <= WORLD.max_operand
        c = make_example(WORLD, "fact_check", rng)
        p = WORLD.person(c.meta["person"])
        assert (c.answer == "yes") == (f"live in {p.town}?" in c.instruction or f"lives in {p.town}." in c.instruction
                                      or f"lives in {p.town}?" in c.instruction)


def test_fact_answers_restate_the_corpus_sentence():
    from embiggen.world import CLOZE_PREFIXES

    e = make_example(WORLD, "fact_qa", random.Random(3))
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
