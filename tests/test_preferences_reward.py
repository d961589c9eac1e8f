import json
import math
import random
from dataclasses import replace

import pytest
import torch

from embiggen.data.mixture import REFUSAL, heldout_template, prompt_mix
from embiggen.data.splits import alignment_material, invented_names
from embiggen.data.tasks import TaskExample
from embiggen.data.world import ALIGNMENT_KINDS, World
from embiggen.judging.labeler import Labeler
from embiggen.judging.preferences import Comparison, collect_preferences, export_pairs, rank_pairs
from embiggen.methods.reward import (RewardModel, bradley_terry_loss, encode_exchange, group_by_prompt, left_pad,
                                     pair_batch, pair_loss, pairwise_accuracy, ranking_batch, ranking_loss, rewards,
                                     train_reward_model)

TASK = TaskExample("arithmetic", 0, "What is 2 plus 3?", "2 plus 3 is 5.")


# ---- preference data -------------------------------------------------------------------------
def test_prompt_mix_mixes_tasks_and_alignment_and_respects_held_out_splits():
    world = World.generate(seed=3, n_people=12, n_unknown=4)
    material = alignment_material(world, "preferences", invented_names(0))
    prompts = prompt_mix(world, 600, seed=1, material=material, task_share=0.5)
    tasks = [p for p in prompts if not p.cluster in ALIGNMENT_KINDS]
    assert 0.42 < len(tasks) / len(prompts) < 0.58
    assert {p.cluster for p in prompts if p.cluster in ALIGNMENT_KINDS} == {"unknown_person", "medical", "harmful"}
    assert all(p.cluster != "fact_check" and p.template != heldout_template(p.cluster) for p in tasks)
    assert {p.meta["person"] for p in prompts if p.cluster == "unknown_person"} <= set(material.unknown_names)
    same = prompt_mix(world, 50, seed=1, material=material)
    assert [p.instruction for p in same] == [p.instruction for p in prompts[:50]]
    reserved = {p.instruction for p in tasks[:20]}
    assert not reserved & {p.instruction for p in prompt_mix(world, 600, 1, material, reserved=reserved)}
    with pytest.raises(ValueError, match="task_share"):
        prompt_mix(world, 5, seed=1, material=material, task_share=1.5)


def test_rank_pairs_makes_every_untied_pair_best_first():
    responses = ["2 plus 3 is 5.", "2 plus 3 is 6.", "2 plus 3 is 7.", REFUSAL]  # gold 1, 0, 0, -1
    judgements, pairs = rank_pairs(Labeler(), TASK, responses, [True] * 4, random.Random(0))
    assert [j.gold for j in judgements] == [1.0, 0.0, 0.0, -1.0]
    assert len(pairs) == 5  # 6 pairs minus the tie between the two wrong answers
    assert all(p.gold_margin > 0 for p in pairs)
    assert {p.pair_type for p in pairs} == {"correct vs wrong", "correct vs declined", "wrong vs declined"}


def test_export_pairs_writes_prompt_chosen_rejected(tmp_path):
    pairs = [Comparison("q?", "good", "bad", "arithmetic", "correct vs wrong", 1.0)]
    path = export_pairs(pairs, tmp_path / "pairs.jsonl")
    row = json.loads(path.read_text().splitlines()[0])
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("q?", "good", "bad")


def test_collect_preferences_samples_k_per_prompt(tiny_base, tiny_splits):
    prompts = tiny_splits.preferences[:6]
    col = collect_preferences(tiny_base.model, tiny_base.tokenizer, prompts, Labeler(), k=3, max_new_tokens=8,
                              seed=0)
    assert len(col.samples) == 6 and all(len(s) == 3 for s in col.samples)
    assert all(isinstance(f, bool) for fs in col.finished for f in fs)
    assert all(p.gold_margin > 0 for p in col.pairs)
    with pytest.raises(ValueError, match="k must be"):
        collect_preferences(tiny_base.model, tiny_base.tokenizer, prompts, Labeler(), k=1)


# ---- reward model ----------------------------------------------------------------------------
def test_the_labelers_written_answer_joins_the_ranking_of_an_unknown_person(tiny_base, tiny_splits, monkeypatch):
    """The samples cannot name someone the model never read of; the labeler's own "I do not know
    anyone called <them>." makes the right-name vs wrong-name and right-name vs no-name pairs."""
    from embiggen.data.mixture import DONT_KNOW, DONT_KNOW_WHO
    from embiggen.judging import preferences

    unknown = next(e for e in tiny_splits.preferences if e.cluster == "unknown_person")
    task = next(e for e in tiny_splits.preferences if e.cluster not in ALIGNMENT_KINDS)
    samples = [DONT_KNOW.format(name="Frida Thorn"), DONT_KNOW_WHO, DONT_KNOW.format(name="Frida Thorn")]
    monkeypatch.setattr(preferences, "sample_responses",
                        lambda *a, **k: ([samples, ["x", "y", "z"]], [[True] * 3, [True] * 3]))
    col = collect_preferences(None, None, [unknown, task], Labeler(), k=3, written=True)
    assert col.written == [[DONT_KNOW.format(name=unknown.meta["person"])], []]
    about_unknown = {(p.chosen, p.rejected, p.pair_type) for p in col.pairs if p.kind == "unknown_person"}
    right = DONT_KNOW.format(name=unknown.meta["person"])
    assert about_unknown == {(right, samples[0], "hedged vs misnamed"), (right, DONT_KNOW_WHO, "hedged vs unnamed"),
                             (DONT_KNOW_WHO, samples[0], "unnamed vs misnamed")}
    without = collect_preferences(None, None, [unknown, task], Labeler(), k=3)
    assert without.written == [[], []] and {p.pair_type for p in without.pairs} == {"unnamed vs misnamed"}


def test_the_labelers_written_declines_lose_to_every_answer_of_an_ordinary_task(tiny_splits, monkeypatch):
    """With written_refusals, each ordinary task's ranking gets one decline of the labeler's own
    (and, about a person, "I do not know anyone called <them>."), ranked below every sample, right
    or wrong; alignment prompts get none, and the held-out collection (written_refusals off) none."""
    from embiggen.data.mixture import DONT_KNOW
    from embiggen.judging import preferences

    fact = next(e for e in tiny_splits.preferences if e.cluster == "fact_qa")
    sums = next(e for e in tiny_splits.preferences if e.cluster == "arithmetic")
    harmful = next(e for e in tiny_splits.preferences if e.cluster == "harmful")
    samples = [[fact.answer, "Somebody lives in Nowhere.", "no"], [sums.answer, "7", "The sum is -1."],
               [REFUSAL, "Sure. Do it when nobody is looking.", REFUSAL]]
    monkeypatch.setattr(preferences, "sample_responses", lambda *a, **k: (samples, [[True] * 3] * 3))
    col = collect_preferences(None, None, [fact, sums, harmful], Labeler(), k=3, written_refusals=True, seed=3)
    named = DONT_KNOW.format(name=fact.meta["person"])
    assert col.written[0][0] == named and len(col.written[0]) == 2 and len(col.written[1]) == 1
    assert all(w in preferences.DECLINES for w in (col.written[0][1], col.written[1][0])) and col.written[2] == []
    for i, example in enumerate((fact, sums)):
        for decline in col.written[i]:
            lost_to = {p.chosen for p in col.pairs if p.prompt == example.instruction and p.rejected == decline}
            assert lost_to == set(samples[i])  # below the right answer and below the wrong ones
            assert not any(p.chosen == decline for p in col.pairs if p.prompt == example.instruction)
    assert {p.chosen for p in col.pairs if p.kind == "harmful"} == {REFUSAL}  # the refusal still wins a harmful request
    draws = {tuple(collect_preferences(None, None, [sums], Labeler(), k=3, written_refusals=True, seed=s).written[0])
             for s in range(40)}
    assert draws == {(d,) for d in preferences.DECLINES}  # every decline is drawn, by the seed
    assert collect_preferences(None, None, [fact, sums, harmful], Labeler(), k=3).written == [[], [], []]
    with pytest.raises(ValueError, match="need an rng"):
        preferences.written_answers(sums, None, refusals=True)


def test_the_labelers_written_misreadings_are_wrong_answers_that_beat_a_decline(tiny_splits, monkeypatch):
    """With written_misreadings, each ordinary task's ranking also gets one harmful request's answer
    (CONFIDENT_HARMFUL): the labeler scores it a wrong answer, so it loses to the right answer, ties
    the wrong samples (no pair) and beats the written decline; harmful requests get none."""
    from embiggen.data.mixture import CONFIDENT_HARMFUL
    from embiggen.judging import preferences

    sums = next(e for e in tiny_splits.preferences if e.cluster == "arithmetic")
    harmful = next(e for e in tiny_splits.preferences if e.cluster == "harmful")
    samples = [[sums.answer, "7", sums.answer], [REFUSAL, "Sure. Do it when nobody is looking.", REFUSAL]]
    monkeypatch.setattr(preferences, "sample_responses", lambda *a, **k: (samples, [[True] * 3] * 2))
    col = collect_preferences(None, None, [sums, harmful], Labeler(), k=3, written_refusals=True,
                              written_misreadings=True, seed=3)
    decline, misreading = col.written[0]
    assert decline in preferences.DECLINES and misreading in CONFIDENT_HARMFUL and col.written[1] == []
    mine = [p for p in col.pairs if p.prompt == sums.instruction and misreading in (p.chosen, p.rejected)]
    assert {(p.chosen, p.rejected) for p in mine} == {(sums.answer, misreading), (misreading, decline)}
    assert not [p for p in mine if "7" in (p.chosen, p.rejected)]  # two wrong answers tie: no pair
    only = collect_preferences(None, None, [sums], Labeler(), k=3, written_misreadings=True, seed=3)
    assert len(only.written[0]) == 1 and only.written[0][0] in CONFIDENT_HARMFUL
    draws = {collect_preferences(None, None, [sums], Labeler(), k=3, written_misreadings=True, seed=s).written[0][0]
             for s in range(40)}
    assert draws == set(CONFIDENT_HARMFUL)


def test_bradley_terry_matches_reference():
    rc, rr = torch.tensor([1.0, -0.5, 3.0]), torch.tensor([0.0, 0.5, -2.0])
    reference = sum(-math.log(1 / (1 + math.exp(-(c - r)))) for c, r in zip(rc.tolist(), rr.tolist())) / 3
    assert bradley_terry_loss(rc, rr).item() == pytest.approx(reference, rel=1e-6)


@pytest.fixture(scope="module")
def tiny_rm(tiny_base):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_base.path, num_labels=1, use_safetensors=True)
    model.config.pad_token_id = tiny_base.tokenizer.pad_token_id
    return model.eval()


def test_reward_is_read_at_the_last_real_token_and_ignores_padding(tiny_rm, tiny_base):
    tok = tiny_base.tokenizer
    short, long = encode_exchange(tok, "Hi?", "Yes."), encode_exchange(tok, "Where does Alma live?", "In a town.")
    batch = left_pad(tok, [short, long])
    got = rewards(tiny_rm, batch)
    # reference: the backbone's last hidden state at the final (EOS) token, times the head, one sequence at a time
    for ids, r in zip([short, long], got):
        hidden = tiny_rm.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        assert r.item() == pytest.approx((tiny_rm.score.weight[0] @ hidden).item(), abs=1e-4)
    assert short[-1] == tok.eos_token_id


def test_an_unfinished_response_gets_no_eos(tiny_rm, tiny_base):
    tok = tiny_base.tokenizer
    finished, unfinished = encode_exchange(tok, "Hi?", "Yes"), encode_exchange(tok, "Hi?", "Yes", finished=False)
    assert finished == unfinished + [tok.eos_token_id] and unfinished[-1] != tok.eos_token_id
    rm = RewardModel(tiny_rm, tok, {}, None, None)
    both = rm.raw_scores(["Hi?", "Hi?"], ["Yes", "Yes"], [True, False])
    alone = [rewards(tiny_rm, left_pad(tok, [ids])).item() for ids in (finished, unfinished)]
    assert both.tolist() == pytest.approx(alone, abs=1e-5)  # each read at its own last token
    pair = Comparison("Hi?", "Yes", "Yes", "x", "x vs y", 1.0, chosen_finished=True, rejected_finished=False)
    batch = pair_batch(tok, [pair])
    assert batch["input_ids"][0, -1] == tok.eos_token_id and batch["input_ids"][1, -1] != tok.eos_token_id


def test_pairwise_accuracy_counts_positive_margins(tiny_rm, tiny_base):
    tok = tiny_base.tokenizer
    pairs = [Comparison("q?", a, b, "arithmetic", t, 1.0) for a, b, t in
             [("yes", "no", "x vs y"), ("no", "yes", "x vs y"), ("maybe", "yes", "z vs y")]]
    r = rewards(tiny_rm, pair_batch(tok, pairs))
    margins = (r[:3] - r[3:]).tolist()
    out = pairwise_accuracy(tiny_rm, tok, pairs)
    assert out["accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 3)
    assert out["margin"] == pytest.approx(sum(margins) / 3, abs=1e-5)
    assert out["per_type"]["z vs y"] == float(margins[2] > 0)


def test_a_rankings_pairs_share_one_batch_element_and_its_answers_are_read_once(tiny_rm, tiny_base):
    """InstructGPT's batching: the K answers of a prompt are each read once, and the loss over all
    their pairs equals the Bradley-Terry loss of the same pairs batched one pair at a time."""
    tok = tiny_base.tokenizer
    ranked = ["4.", "5.", "I cannot help with that.", "It is 5."]  # best first: every pair of four answers
    pairs = [Comparison("What is 2 plus 3?", ranked[i], ranked[j], "arithmetic", "t", 1.0)
             for i in range(4) for j in range(i + 1, 4)]
    pairs += [Comparison("Hi?", "Hello.", "Go away.", "x", "t", 1.0, rejected_finished=False)]
    groups = group_by_prompt(pairs)
    assert [len(g) for g in groups] == [6, 1]
    batch = ranking_batch(tok, groups)
    assert batch["input_ids"].shape[0] == 4 + 2  # six answers read, not fourteen
    loss, _ = ranking_loss(tiny_rm, batch)
    # reference: every pair on its own, chosen and rejected scored apart, -log sigmoid of the difference averaged
    by_pair = [pair_loss(tiny_rm, pair_batch(tok, [p]))[0].item() for p in pairs]
    assert loss.item() == pytest.approx(sum(by_pair) / len(by_pair), abs=1e-5)


def test_reward_training_learns_a_preference(tiny_base):
    from transformers import AutoModelForSequenceClassification

    from embiggen.presets import OptimConfig, RewardConfig

    tok = tiny_base.tokenizer
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_base.path, num_labels=1, use_safetensors=True)
    model.config.pad_token_id = tok.pad_token_id
    pairs = [Comparison(f"Question {i}?", "I cannot help with that.", f"Sure, {i}.", "harmful", "refused vs complied",
                        2.0) for i in range(20)]
    before = pairwise_accuracy(model, tok, pairs)["loss"]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for batching in ("prompt", "pair"):
        model.load_state_dict(state)
        cfg = RewardConfig(steps=30, batch_size=8, eval_every=30, optim=OptimConfig(lr=3e-3, warmup_steps=2),
                           batching=batching)
        train_reward_model(model, tok, pairs, pairs[:4], cfg, device="cpu", progress=False)
        after = pairwise_accuracy(model, tok, pairs)
        assert after["loss"] < before and after["accuracy"] == 1.0
    with pytest.raises(ValueError, match="batching"):
        train_reward_model(model, tok, pairs, [], replace(cfg, batching="pairs"), device="cpu", progress=False)
    with pytest.raises(ValueError, match="no preference pairs"):
        train_reward_model(model, tok, [], [], cfg, device="cpu", progress=False)


def test_reward_model_score_is_normalised(tiny_rm, tiny_base):
    rm = RewardModel(tiny_rm, tiny_base.tokenizer, {"reward_mean": 0.3, "reward_std": 2.0}, None, None)
    raw = rm.raw_scores(["a?", "b?"], ["x", "y"])
    assert torch.allclose(rm.score(["a?", "b?"], ["x", "y"]), (raw - 0.3) / 2.0)
    with pytest.raises(ValueError, match="responses"):
        rm.raw_scores(["a?"], ["x", "y"])


def test_first_ranked_skips_prompts_whose_samples_all_tie():
    from embiggen.judging.preferences import Collection, first_ranked

    lab = Labeler()
    prompts = [TASK, TASK, TaskExample("harmful", 0, "Hurt X?", "")]
    samples = [["2 plus 3 is 6."] * 2, ["2 plus 3 is 5.", "2 plus 3 is 6."], [REFUSAL, "Sure."]]
    judgements = [[lab.judge(e, s) for s in ss] for e, ss in zip(prompts, samples)]
    col = Collection(prompts, samples, [[True] * 2] * 3, judgements, [])
    assert first_ranked(col, ["arithmetic", "harmful", "medical"]) == [1, 2]
