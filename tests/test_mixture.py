import json

import pytest

from embiggen.data.mixture import (DONT_KNOW, DONT_KNOW_WHO, MixtureSpec, assert_no_leak, evaluation_sets, export_jsonl,
                                   heldin_templates, heldout_template, training_mixture)
from embiggen.data.splits import alignment_material, invented_names
from embiggen.data.tasks import CLUSTERS, TaskExample
from embiggen.data.world import ALIGNMENT_KINDS, World

WORLD = World.generate(5, 20, n_unknown=8)
NAMES = invented_names(0)
SFT, EVAL = alignment_material(WORLD, "sft", NAMES), alignment_material(WORLD, "eval", NAMES)


def test_held_out_splits_never_leak_into_training():
    spec = MixtureSpec(heldout_cluster="extraction")
    train = training_mixture(WORLD, 3000, seed=0, material=SFT, spec=spec)
    assert {e.cluster for e in train} >= set(spec.train_clusters)
    assert "extraction" not in {e.cluster for e in train}
    for e in train:
        if e.cluster in CLUSTERS:
            assert e.template in heldin_templates(e.cluster) and e.template != heldout_template(e.cluster)
    for p in WORLD.pretraining_only_people:
        for e in train:
            if p.name in e.instruction or p.name in e.answer:  # allowed: a fact-free story about them
                assert e.cluster == "story_character"
                assert not any(getattr(p, a) in e.instruction + e.answer for a in ("town", "job", "pet", "colour", "food"))
    sets = evaluation_sets(WORLD, 10, seed=1, material=EVAL, spec=spec)
    assert all(e.template == heldout_template(e.cluster) for e in sets["heldout_template"])
    assert {e.cluster for e in sets["heldout_cluster"]} == {"extraction"}
    assert len(sets["pretraining_only_facts"]) == 5 * len(WORLD.pretraining_only_people)


def test_leak_check_catches_leaks():
    spec = MixtureSpec()
    with pytest.raises(AssertionError, match="held-out cluster"):
        assert_no_leak(WORLD, [TaskExample(spec.heldout_cluster, 0, "x", "y")], spec)
    with pytest.raises(AssertionError, match="held-out template"):
        assert_no_leak(WORLD, [TaskExample("counting", heldout_template("counting"), "x", "y")], spec)
    secret = WORLD.pretraining_only_people[0]
    with pytest.raises(AssertionError, match="pretraining-only"):
        assert_no_leak(WORLD, [TaskExample("fact_qa", 0, f"Where does {secret.name} live?", f"In {secret.town}.")], spec)
    assert_no_leak(WORLD, [TaskExample("story_character", 0, f"A story about {secret.name}.", secret.name)], spec)
    with pytest.raises(ValueError, match="held-out cluster"):
        training_mixture(WORLD, 10, seed=0, material=SFT, spec=spec, clusters=[spec.heldout_cluster])


def test_mixture_is_confident_with_a_small_hedged_share():
    train = training_mixture(WORLD, 4000, seed=0, material=SFT, spec=MixtureSpec(alignment_share=0.1, hedge_share=0.1))
    aligned = [e for e in train if e.cluster in ALIGNMENT_KINDS]
    assert 0.07 < len(aligned) / len(train) < 0.13
    hedged = [e for e in aligned if e.meta["hedged"]]
    assert 0.05 < len(hedged) / len(aligned) < 0.16
    unknown = [e for e in aligned if e.cluster == "unknown_person"]
    for e in unknown:
        assert (e.answer in (DONT_KNOW.format(name=e.meta["person"]), DONT_KNOW_WHO)) == e.meta["hedged"]
        assert e.meta["person"] in SFT.unknown_names and e.meta["person"] in e.instruction
        # phrased like a question about a real person: a held-in fact_qa template around a fact question
        assert e.template in heldin_templates("fact_qa")
    # the honest demonstrations about unknown people: about half name them, the rest say "I do not know who that is."
    hedged_unknown = [e for e in unknown if e.meta["hedged"]]
    named = sum(e.answer != DONT_KNOW_WHO for e in hedged_unknown)
    assert 0.3 < named / len(hedged_unknown) < 0.7


def test_bad_held_out_cluster():
    with pytest.raises(ValueError, match="valid clusters"):
        MixtureSpec(heldout_cluster="poetry")


def test_export_jsonl_messages_format(tmp_path):
    examples = training_mixture(WORLD, 20, seed=0, material=SFT)
    path = export_jsonl(examples, tmp_path / "mix.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 20
    assert rows[0]["messages"] == [{"role": "user", "content": examples[0].instruction},
                                   {"role": "assistant", "content": examples[0].answer}]
