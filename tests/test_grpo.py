"""GRPO and the verifiers, each piece against a plain reference computation written out here."""

import itertools
import math
import random
from dataclasses import replace

import pytest
import torch

from embiggen.data.tasks import TaskExample
from embiggen.judging.verifiers import (contains_reward, exact_reward, majority_answer, majority_vote_accuracy,
                                        pass_at_k, pass_at_k_curve, verifier_for)
from embiggen.methods.grpo import (GRPOTrainer, aggregate, clipped_token_losses, group_advantages, grpo_loss, kl_k3,
                                   train_grpo, zero_signal)
from embiggen.presets import GRPOConfig, OptimConfig


# ---------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------
def test_group_advantages_match_the_formula_written_out():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    for scale, baseline in itertools.product([True, False], ["mean", "leave_one_out"]):
        got = group_advantages(rewards, scale_rewards=scale, baseline=baseline)
        for i, row in enumerate(rewards.tolist()):
            G = len(row)
            mean = sum(row) / G
            std = math.sqrt(sum((r - mean) ** 2 for r in row) / (G - 1))
            for j, r in enumerate(row):
                b = mean if baseline == "mean" else (sum(row) - r) / (G - 1)
                expected = (r - b) / (std + 1e-4) if scale else r - b
                assert got[i, j].item() == pytest.approx(expected, abs=1e-5), (scale, baseline, i, j)
    # a group whose answers all scored the same carries no signal: zero advantages, never NaN
    assert torch.equal(group_advantages(rewards)[2], torch.zeros(4))
    assert zero_signal(rewards).tolist() == [False, False, True]
    # RLOO's advantages are the mean baseline's times G / (G - 1)
    assert torch.allclose(group_advantages(rewards, False, "leave_one_out"), group_advantages(rewards, False) * 4 / 3)


def test_group_advantages_refuse_what_has_no_group():
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(4, 1))
    with pytest.raises(ValueError, match="baseline"):
        group_advantages(torch.ones(2, 3), baseline="median")


# ---------------------------------------------------------------------------------------
# The clipped loss and how it is averaged
# ---------------------------------------------------------------------------------------
def _reference_token_loss(logp, old, a, eps_low, eps_high):
    ratio = math.exp(logp - old)
    return -min(ratio * a, min(max(ratio, 1 - eps_low), 1 + eps_high) * a)


def test_clipped_token_losses_and_every_aggregation_match_plain_loops():
    torch.manual_seed(0)
    logprobs, old = torch.randn(3, 5) * 0.3 - 1, torch.randn(3, 5) * 0.3 - 1
    advantages = torch.tensor([1.5, -0.7, 0.0])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    losses, _ = clipped_token_losses(logprobs, old, advantages, 0.2, 0.28)
    ref = [[_reference_token_loss(logprobs[i, t].item(), old[i, t].item(), advantages[i].item(), 0.2, 0.28)
            for t in range(5)] for i in range(3)]
    assert torch.allclose(losses, torch.tensor(ref), atol=1e-6)
    lengths = [sum(m) for m in mask.tolist()]
    per_answer = [sum(ref[i][t] for t in range(5) if mask[i, t]) / lengths[i] for i in range(3)]
    total = sum(ref[i][t] for i in range(3) for t in range(5) if mask[i, t])
    assert aggregate(losses, mask, "grpo").item() == pytest.approx(sum(per_answer) / 3, abs=1e-6)
    assert aggregate(losses, mask, "dapo").item() == pytest.approx(total / sum(lengths), abs=1e-6)
    assert aggregate(losses, mask, "dr_grpo", max_tokens=8).item() == pytest.approx(total / (3 * 8), abs=1e-6)
    with pytest.raises(ValueError, match="loss_type"):
        aggregate(losses, mask, "mean")


def test_k3_matches_its_formula_and_is_never_negative():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -0.5])
    expected = [math.exp(r - p) - (r - p) - 1 for p, r in zip(logp.tolist(), ref.tolist())]
    assert torch.allclose(kl_k3(logp, ref), torch.tensor(expected), atol=1e-6)
    assert (kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()


def test_on_policy_the_loss_is_the_advantage_weighted_log_likelihood():
    """With pi_old = pi (rho = 1) GRPO's gradient is REINFORCE's: -sum_i A_i grad mean_t log pi(y_t)."""
    logits = torch.randn(2, 4, requires_grad=True)
    advantages, mask = torch.tensor([1.0, -2.0]), torch.ones(2, 4)
    loss, stats = grpo_loss(logits, logits.detach(), advantages, mask)
    loss.backward()
    expected_grad = (-advantages[:, None] / 4 / 2).expand(2, 4)  # d/dlogp of -(1/2) sum_i A_i mean_t logp
    assert torch.allclose(logits.grad, expected_grad) and stats["clip_frac"] == 0.0


def test_a_batch_without_signal_has_zero_loss_and_zero_gradient():
    logp = torch.randn(4, 6, requires_grad=True)
    loss, _ = grpo_loss(logp, logp.detach() + 0.1, torch.zeros(4), torch.ones(4, 6), loss_type="dapo")
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(4, 6))
    # an empty mask neither divides by zero nor averages over nothing
    empty, _ = grpo_loss(logp, logp.detach(), torch.ones(4), torch.zeros(4, 6))
    assert empty.item() == 0.0


def test_skipping_answers_without_advantage_gives_the_same_loss_and_gradient():
    torch.manual_seed(1)
    logp = torch.randn(6, 5, requires_grad=True)
    old = (logp + 0.05 * torch.randn(6, 5)).detach()
    advantages = torch.tensor([0.0, 1.0, 0.0, -1.0, 0.5, 0.0])
    mask = (torch.rand(6, 5) > 0.2).long()
    for loss_type in ("grpo", "dapo", "dr_grpo"):
        full, _ = grpo_loss(logp, old, advantages, mask, loss_type=loss_type, max_tokens=5)
        (g_full,) = torch.autograd.grad(full, logp)
        keep = advantages != 0
        part, _ = grpo_loss(logp[keep], old[keep], advantages[keep], mask[keep], loss_type=loss_type,
                            n_answers=6, n_tokens=int(mask.sum()), max_tokens=5)
        (g_part,) = torch.autograd.grad(part, logp)
        assert part.item() == pytest.approx(full.item(), abs=1e-6), loss_type
        assert torch.allclose(g_part, g_full, atol=1e-7), loss_type


# ---------------------------------------------------------------------------------------
# Verifiers, pass@k, majority votes
# ---------------------------------------------------------------------------------------
ADD = TaskExample("arithmetic", 0, "What is 4 plus 8?", "4 plus 8 is 12.")
COUNT = TaskExample("counting", 1, "Count the tea in: tea, milk, tea.", "2")


def test_verifiers_use_the_evaluation_scorer_and_never_raise():
    assert exact_reward(ADD, "4 plus 8 is 12.") == 1.0 and exact_reward(ADD, " 4 plus 8 is 12\nmore") == 1.0
    assert exact_reward(ADD, "12") == 0.0 and exact_reward(COUNT, "2") == 1.0
    for bad in ["", "   ", None, 12, b"2", ["2"]]:
        assert exact_reward(COUNT, bad) == 0.0 and contains_reward(COUNT, bad) == 0.0
    # the loose checker accepts any answer that contains the reference, anywhere
    sort = TaskExample("list_ops", 0, "Sort: rice, apples.", "apples, rice")
    assert contains_reward(sort, "apples, rice") == 1.0 and contains_reward(sort, "Apples, rice, tea.") == 1.0
    assert contains_reward(sort, "rice, apples") == 0.0 and exact_reward(sort, "apples, rice, tea") == 0.0
    assert contains_reward(COUNT, "1, 2, 3") == 1.0 and contains_reward(COUNT, "12") == 1.0  # the bug, on purpose
    assert contains_reward(TaskExample("counting", 0, "?", ""), "anything") == 0.0
    assert verifier_for("exact") is exact_reward and verifier_for("loose") is contains_reward
    with pytest.raises(ValueError, match="verifier"):
        verifier_for("lenient")


def test_pass_at_k_matches_brute_force_over_subsets():
    for n, c in [(5, 0), (5, 2), (6, 3), (4, 4), (7, 1)]:
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute), (n, c, k)
    with pytest.raises(ValueError):
        pass_at_k(4, 2, 5)


def test_pass_at_k_curve_and_majority_vote():
    examples = [COUNT, ADD]
    samples = [["2", "3", "2", "2"], ["12", "4 plus 8 is 12.", "4 plus 8 is 13.", "4 plus 8 is 13."]]
    curve = pass_at_k_curve(examples, samples, ks=(1, 4))
    assert curve["correct"] == [3, 1]
    assert curve["pass_at_k"][1] == pytest.approx((3 / 4 + 1 / 4) / 2) and curve["pass_at_k"][4] == 1.0
    assert curve["per_cluster"]["counting"][1] == pytest.approx(0.75)
    assert majority_answer(["b", "a", "a.", "b"]) == "b"  # a tie goes to the answer that came first
    assert majority_answer([" A", "a", "b"]) == " A"  # compared as the scorer compares: "a" twice
    assert majority_vote_accuracy(examples, samples, k=4) == 0.5  # "2" wins; "...13." wins
    assert majority_vote_accuracy(examples, samples, k=1) == 0.5


# ---------------------------------------------------------------------------------------
# The trainer, end to end on a tiny model
# ---------------------------------------------------------------------------------------
def short_answer(example, response) -> float:
    """A checkable toy reward for an untrained model: short answers win."""
    return 1.0 if len(response) < 12 else 0.0


def tiny_cfg(**overrides) -> GRPOConfig:
    base = GRPOConfig(steps=6, prompts_per_step=4, group_size=4, minibatch_size=16, max_new_tokens=16, kl_coef=0.0,
                      optim=OptimConfig(lr=1e-2, min_lr_ratio=1.0, warmup_steps=0, weight_decay=0.0))
    return replace(base, **overrides)


def prompts_of(tiny_base, n=32):
    return [TaskExample("counting", 0, f"Count the tea in: {', '.join(['tea'] * (i % 4 + 1))}.", str(i % 4 + 1))
            for i in range(n)]


def make_trainer(tiny_base, verifier=short_answer, ref=True, **overrides):
    import copy
    return GRPOTrainer(copy.deepcopy(tiny_base.model), tiny_base.tokenizer, verifier, tiny_cfg(**overrides),
                       ref_lm=tiny_base.model if ref else None, device="cpu", seed=0)


def test_grpo_raises_a_verifiable_reward_end_to_end(tiny_base):
    log = train_grpo(make_trainer(tiny_base, steps=12), prompts_of(tiny_base), steps=12, seed=0, progress=False)
    reward = log.series("reward")
    assert sum(reward[-3:]) / 3 > sum(reward[:3]) / 3 + 0.15, reward
    assert all(0 <= r["zero_signal"] <= 1 and r["kl"] >= -1e-3 and math.isfinite(r["loss"]) for r in log.rows)
    assert log.rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first batch is sampled by the reference itself
    again = train_grpo(make_trainer(tiny_base, steps=12), prompts_of(tiny_base), steps=3, seed=0, progress=False)
    assert again.series("reward") == pytest.approx(reward[:3])  # same seed, same numbers


def test_a_step_without_signal_changes_nothing(tiny_base):
    trainer = make_trainer(tiny_base, verifier=lambda e, r: 1.0)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    row = trainer.step(prompts_of(tiny_base, 4))
    assert row["zero_signal"] == 1.0 and row["updated_answers"] == 0 and row["loss"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))


def test_several_updates_per_batch_are_clipped_against_the_sampling_policy(tiny_base):
    trainer = make_trainer(tiny_base, epochs=3, minibatch_size=8)
    assert not trainer.on_policy
    row = trainer.step(prompts_of(tiny_base, 4))
    assert 0 < row["clip_frac"] <= 1 and math.isfinite(row["loss"])
    # with one on-policy step per batch the ratio is exactly 1: nothing is clipped
    on = make_trainer(tiny_base)
    assert on.on_policy and on.step(prompts_of(tiny_base, 4))["clip_frac"] == 0.0


def test_k3_needs_a_reference_and_bad_settings_are_refused(tiny_base):
    with pytest.raises(ValueError, match="ref_lm"):
        make_trainer(tiny_base, ref=False, kl_coef=0.1)
    with pytest.raises(ValueError, match="group_size"):
        make_trainer(tiny_base, group_size=1)
    with pytest.raises(ValueError, match="loss_type"):
        make_trainer(tiny_base, loss_type="ppo")
    row = make_trainer(tiny_base, kl_coef=0.5).step(prompts_of(tiny_base, 4))
    assert math.isfinite(row["loss"])


def test_interrupted_grpo_resumes_to_the_same_weights(tiny_base, tmp_path):
    prompts = prompts_of(tiny_base)

    class Interrupt(Exception):
        pass

    def stop_at_3(step, row):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_grpo(make_trainer(tiny_base), prompts, steps=4, seed=0, progress=False, callback=stop_at_3,
                   resume_dir=tmp_path / "resume", save_every=2)
    resumed = make_trainer(tiny_base)
    log = train_grpo(resumed, prompts, steps=4, seed=0, progress=False, resume_dir=tmp_path / "resume", save_every=2)
    straight = make_trainer(tiny_base)
    reference = train_grpo(straight, prompts, steps=4, seed=0, progress=False)
    assert [r["step"] for r in log.rows] == [1, 2, 3, 4]
    assert log.series("reward") == pytest.approx(reference.series("reward"))
    for (name, a), b in zip(resumed.policy.state_dict().items(), straight.policy.state_dict().values()):
        assert torch.equal(a, b), name


def test_evaluation_rows_sit_on_the_steps_they_were_measured_at(tiny_base):
    trainer, calls = make_trainer(tiny_base), []

    def evaluate(policy):
        assert policy is trainer.policy
        calls.append(trainer.n_steps)
        return {"eval_accuracy": random.random()}

    log = train_grpo(trainer, prompts_of(tiny_base), steps=5, seed=0, progress=False, evaluate=evaluate, eval_every=2)
    assert calls == [0, 2, 4, 5] and [r["step"] for r in log.rows if "eval_accuracy" in r] == [0, 2, 4, 5]


# ---------------------------------------------------------------------------------------
# The stage, its baselines and its data
# ---------------------------------------------------------------------------------------
def test_grpo_prompts_are_held_in_templates_of_its_clusters_and_no_evaluation_prompt(tiny_splits):
    from embiggen.data.mixture import heldin_templates

    prompts = tiny_splits.grpo_train(("counting", "extraction"), 40)
    assert {e.cluster for e in prompts} == {"counting", "extraction"}
    assert all(e.template in heldin_templates(e.cluster) for e in prompts)
    assert not {e.instruction for e in prompts} & tiny_splits.reserved
    # the stage's sets are training sets, so the overlap test checks them
    assert any(name.startswith("grpo.") for name in tiny_splits.training_sets())
    with pytest.raises(ValueError, match="not training clusters"):
        tiny_splits.grpo_train(("fact_check",))  # the held-out cluster no stage trains on
    curve = tiny_splits.grpo_curve(("counting",), 3)
    assert len(curve) == 3 and all(e in tiny_splits.sft_eval["heldin_template"] for e in curve)


def test_the_verifier_as_ppos_reward_model():
    from embiggen.judging.verifiers import VerifierReward

    reward = VerifierReward(exact_reward, [ADD, COUNT])
    assert reward.score([ADD.instruction, COUNT.instruction], ["4 plus 8 is 12.", "3"]).tolist() == [1.0, 0.0]
    with pytest.raises(KeyError, match="no task"):
        reward.score(["What is 1 plus 1?"], ["2"])


def test_one_update_on_a_group_pushes_the_right_answers_up_and_leaves_the_policy_alone(tiny_base):
    from embiggen.methods.grpo import push_of_one_update

    before = [p.detach().clone() for p in tiny_base.model.parameters()]
    for seed in range(10):  # the untrained model's answers are mostly long: the first group with a short one
        result = push_of_one_update(tiny_base.model, tiny_base.tokenizer, prompts_of(tiny_base, 1)[0], short_answer,
                                    tiny_cfg(), group_size=8, seed=seed)
        assert all(torch.equal(a, b) for a, b in zip(before, tiny_base.model.parameters()))
        answers = result["answers"]
        assert len(answers) == 8 and all(len(a["tokens"]) == len(a["push"]) > 0 for a in answers)
        assert result["zero_signal"] == (len({a["reward"] for a in answers}) == 1)
        if not result["zero_signal"]:
            break
    assert not result["zero_signal"], [a["text"] for a in answers]
    up = [sum(a["push"]) for a in answers if a["advantage"] > 0]
    down = [sum(a["push"]) for a in answers if a["advantage"] < 0]
    assert sum(up) / len(up) > sum(down) / len(down)


def test_expert_iteration_fine_tunes_on_verified_answers_only(tiny_base):
    import copy

    from embiggen.methods.expert_iteration import expert_iteration, verified_answers
    from embiggen.presets import SFTConfig

    prompts = prompts_of(tiny_base, 8)
    kept, stats = verified_answers(tiny_base.model, tiny_base.tokenizer, prompts, 4, short_answer, 16, seed=1)
    assert stats["sampled"] == 32 and stats["kept"] == len(kept) <= stats["accepted"]
    assert all(short_answer(e, e.answer) == 1.0 for e in kept)
    model = copy.deepcopy(tiny_base.model)
    cfg = SFTConfig(steps=3, batch_size=4, max_length=64, eval_every=3, replay_share=0.0,
                    optim=OptimConfig(lr=1e-3, warmup_steps=1, weight_decay=0.0))
    rows = expert_iteration(model, tiny_base.tokenizer, [prompts[:4], prompts[4:]], short_answer, cfg, 4, 16, seed=1,
                            device="cpu", evaluate=lambda m: {"eval_accuracy": 0.5}, progress=False)
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[-1]["answers_sampled"] == 32
    assert all(r["eval_accuracy"] == 0.5 for r in rows)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), tiny_base.model.parameters()))


def test_the_grpo_stage_trains_caches_and_reports(tiny_preset, tiny_base, cache_dir):
    """The `grpo` stage on a tiny model (the tiny base stands in for the SFT model): trained,
    cached, and reported with every key the report card needs."""
    import embiggen.pipeline as pipeline
    from embiggen.chain import train_or_load_grpo

    preset = replace(tiny_preset, grpo=replace(tiny_preset.grpo, steps=4, eval_every=2, n_prompts=32),
                     evaluation=replace(tiny_preset.evaluation, n_pass_samples=4, pass_k=(1, 4)))
    tuned = train_or_load_grpo(preset, sft=tiny_base, progress=False, device="cpu")
    assert tuned.path.parent.name == "grpo" and [r["step"] for r in tuned.log.rows] == [0, 1, 2, 3, 4]
    assert "eval_accuracy" in tuned.log.rows[0] and "eval_accuracy" in tuned.log.rows[2]
    again = train_or_load_grpo(preset, sft=tiny_base, progress=False, device="cpu")
    assert again.path == tuned.path and again.info == tuned.info and again.log.rows == tuned.log.rows
    report = pipeline.report_grpo(preset, {"grpo": tuned, "sft": tiny_base}, pipeline.Measured())
    clusters = set(preset.grpo.clusters)
    assert clusters <= set(report["heldin_template_accuracy_grpo"]) and report["eval_train_overlap"] == 0
    assert set(report["pass_at_k_sft"]["heldin_template"]) == {"1", "4"}
    p = report["pass_at_k_grpo"]["heldout_template"]
    assert 0 <= p["1"] <= p["4"] <= 1
    for key in ("train_seconds", "kl", "zero_signal_share", "untrained_clusters_accuracy_change",
                "alignment_rate_largest_change", "response_length_first_tenth", "honest_rate_grpo"):
        assert key in report and (report[key] != report[key] or isinstance(report[key], float | int)), key


def test_grouped_sampling_reads_each_prompt_once_and_decodes_as_generate_does(tiny_base):
    from embiggen.lm.generate import answer_logprobs, generate_ids, sample_grouped_episodes
    from embiggen.lm.tokenizer import chat_prompt

    model, tok = tiny_base.model, tiny_base.tokenizer
    instructions = [e.instruction for e in prompts_of(tiny_base, 3)]
    greedy = sample_grouped_episodes(model, tok, instructions, 2, 12, greedy=True)
    reference = generate_ids(model, tok, [chat_prompt(tok, x) for x in instructions for _ in range(2)], 12)
    for row, ids in zip(greedy["responses"], reference):
        assert torch.equal(row[: len(ids)], ids)
    torch.manual_seed(0)
    ep = sample_grouped_episodes(model, tok, instructions, 4, 12)
    assert ep["sequences"].shape[0] == 12 and torch.equal(ep["sequences"][0, :ep["prompt_len"]],
                                                          ep["sequences"][3, :ep["prompt_len"]])
    # the rows are ordinary episodes: their log-probabilities recomputed in one pass are finite and the masks agree
    logp, _ = answer_logprobs(model, ep, 1.0)
    assert torch.isfinite(logp[ep["mask"].bool()]).all()
    assert torch.equal(ep["attention_mask"][:, ep["prompt_len"]:], ep["mask"])
