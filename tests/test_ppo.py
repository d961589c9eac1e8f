import math
import random
from dataclasses import replace

import pytest
import torch

from embiggen.lm.generate import position_ids_from, response_logprobs, response_mask
from embiggen.methods.ppo import (AdaptiveKLController, FixedKLController, PPODivergence, PPOTrainer,
                                  clipped_policy_loss, clipped_value_loss, gae, kl_penalty, masked_mean, masked_whiten,
                                  per_token_rewards, train_ppo)
from embiggen.presets import PPOConfig

torch.manual_seed(0)
B, T = 3, 5
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float)


def test_gae_matches_a_naive_loop():
    rewards, values = torch.randn(B, T), torch.randn(B, T)
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, MASK, gamma, lam)
    for b in range(B):
        n = int(MASK[b].sum())
        r, v = rewards[b, :n].tolist(), values[b, :n].tolist() + [0.0]  # V after the last token is 0
        expected = []
        for t in range(n):  # A_t = sum_l (gamma lam)^l delta_{t+l}
            a = sum((gamma * lam) ** (k - t) * (r[k] + gamma * v[k + 1] - v[k]) for k in range(t, n))
            expected.append(a)
        assert adv[b, :n].tolist() == pytest.approx(expected, abs=1e-5)
        assert ret[b, :n].tolist() == pytest.approx([a + x for a, x in zip(expected, v)], abs=1e-5)
        assert adv[b, n:].abs().sum() == 0 and ret[b, n:].abs().sum() == 0


def test_masked_whiten_matches_reference():
    x = torch.randn(B, T)
    out = masked_whiten(x, MASK)
    vals = [x[b, t].item() for b in range(B) for t in range(T) if MASK[b, t]]
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    got = [out[b, t].item() for b in range(B) for t in range(T) if MASK[b, t]]
    assert got == pytest.approx([(v - mean) / std for v in vals], abs=1e-4)
    kept = masked_whiten(x, MASK, shift_mean=False)
    assert [kept[b, t].item() for b in range(B) for t in range(T) if MASK[b, t]] == pytest.approx(
        [(v - mean) / std + mean for v in vals], abs=1e-4)
    assert masked_mean(x, MASK).item() == pytest.approx(mean, abs=1e-6)


def test_kl_estimators_match_formulas_and_estimate_kl():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -0.5])
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0, 0.0])
    k3 = [(math.exp(r - p) - 1) - (r - p) for p, r in zip(logp.tolist(), ref.tolist())]
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx(k3, abs=1e-6)
    # both are unbiased estimators of KL(p || q) from samples of p
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    true_kl = (p * (p / q).log()).sum().item()
    samples = torch.multinomial(p, 200000, replacement=True, generator=torch.Generator().manual_seed(0))
    for est in ("k1", "k3"):
        assert kl_penalty(p.log()[samples], q.log()[samples], est).mean().item() == pytest.approx(true_kl, abs=0.01)
    assert (kl_penalty(p.log()[samples], q.log()[samples], "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1, k3"):
        kl_penalty(logp, ref, "k2")


def test_per_token_rewards_put_the_score_on_the_last_token():
    kl, scores = torch.randn(B, T), torch.tensor([1.0, 2.0, 3.0])
    out = per_token_rewards(scores, kl, MASK, kl_coef=0.1)
    for b in range(B):
        n = int(MASK[b].sum())
        expected = [-0.1 * kl[b, t].item() + (scores[b].item() if t == n - 1 else 0.0) for t in range(n)]
        assert out[b, :n].tolist() == pytest.approx(expected, abs=1e-6)
        assert out[b, n:].abs().sum() == 0


def test_clipped_policy_loss_matches_reference():
    logp, old, adv = torch.randn(B, T) * 0.3, torch.randn(B, T) * 0.3, torch.randn(B, T)
    eps = 0.2
    loss, stats = clipped_policy_loss(logp, old, adv, MASK, eps)
    terms, clipped = [], []
    for b in range(B):
        for t in range(T):
            if not MASK[b, t]:
                continue
            ratio = math.exp(logp[b, t].item() - old[b, t].item())
            a = adv[b, t].item()
            u, c = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)
            terms.append(max(u, c))
            clipped.append(c > u)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-5)
    assert stats["clip_frac"] == pytest.approx(sum(clipped) / len(clipped))
    # at ratio 1 (before any update) nothing is clipped and the loss is -mean(A)
    loss1, stats1 = clipped_policy_loss(old, old, adv, MASK, eps)
    assert loss1.item() == pytest.approx(-masked_mean(adv, MASK).item(), abs=1e-6)
    assert stats1["clip_frac"] == 0 and stats1["approx_kl"] == 0


def test_clipped_value_loss_matches_reference():
    v, old, ret = torch.randn(B, T), torch.randn(B, T), torch.randn(B, T)
    eps = 0.2
    terms = []
    for b in range(B):
        for t in range(T):
            if MASK[b, t]:
                vc = old[b, t].item() + min(max(v[b, t].item() - old[b, t].item(), -eps), eps)
                terms.append(0.5 * max((v[b, t].item() - ret[b, t].item()) ** 2, (vc - ret[b, t].item()) ** 2))
    assert clipped_value_loss(v, old, ret, MASK, eps).item() == pytest.approx(sum(terms) / len(terms), abs=1e-5)


def test_explained_variance_matches_reference():
    from embiggen.methods.ppo import explained_variance

    v, r = torch.randn(B, T), torch.randn(B, T)
    pairs = [(v[b, t].item(), r[b, t].item()) for b in range(B) for t in range(T) if MASK[b, t]]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    var = lambda xs: mean([(x - mean(xs)) ** 2 for x in xs])  # noqa: E731
    expected = 1 - var([rr - vv for vv, rr in pairs]) / var([rr for _, rr in pairs])
    assert explained_variance(v, r, MASK) == pytest.approx(expected, abs=1e-5)
    assert explained_variance(r, r, MASK) == pytest.approx(1.0)


def test_adaptive_kl_controller_follows_ziegler():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, n_steps=64)  # error = clip(9/6 - 1) = 0.2 at most
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))
    ctl2 = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl2.update(5.4, n_steps=64)
    assert ctl2.value == pytest.approx(0.1 * (1 + (5.4 / 6 - 1) * 64 / 10000))
    fixed = FixedKLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.value == 0.1


def test_best_of_n_kl_bound_formula():
    from embiggen.methods.best_of_n import best_of_n_kl_bound

    assert best_of_n_kl_bound(1) == 0.0
    assert best_of_n_kl_bound(4) == pytest.approx(math.log(4) - 3 / 4)


def test_response_mask_stops_after_first_eos():
    eos = 9
    responses = torch.tensor([[1, 2, eos, 0, 0], [1, 2, 3, 4, 5], [eos, 0, 0, 0, 0]])
    mask, finished = response_mask(responses, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert finished.tolist() == [True, False, True]


def test_response_logprobs_use_the_temperature():
    logits, responses = torch.randn(2, 3, 7), torch.randint(7, (2, 3))
    lp, ent = response_logprobs(logits, responses, temperature=0.7)
    for b in range(2):
        for i in range(3):
            dist = torch.log_softmax(logits[b, i] / 0.7, -1)
            assert lp[b, i].item() == pytest.approx(dist[responses[b, i]].item(), abs=1e-5)
            assert ent[b, i].item() == pytest.approx(-(dist.exp() * dist).sum().item(), abs=1e-5)


class LengthReward:
    """A stand-in reward model: shorter responses score higher."""

    def score(self, instructions, responses, finished=None):
        return torch.tensor([-len(r) / 10 for r in responses])


class ConstantLabeler:
    def judge(self, example, response, finished=True):
        from embiggen.judging.labeler import Judgement

        return Judgement(0.0, 0.0, 0.0, "wrong" if finished else "unfinished", finished)


def make_trainer(tiny_base, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_base.path, use_safetensors=True)
    ref = AutoModelForCausalLM.from_pretrained(tiny_base.path, use_safetensors=True)
    ptx_data = overrides.pop("ptx_data", None)
    cfg = PPOConfig(**{**dict(batch_size=16, minibatch_size=8, ppo_epochs=2, max_new_tokens=12,
                              optim=replace(PPOConfig().optim, lr=3e-3), kl_coef=0.0, ptx_coef=0.0), **overrides})
    return PPOTrainer(policy, ref, tiny_base.tokenizer, LengthReward(), ConstantLabeler(), cfg, device="cpu", seed=0,
                      ptx_data=ptx_data)


def prompts_of(tiny_base, n=32):
    from embiggen.data.splits import data_splits

    return data_splits(tiny_base.preset).ppo[:n]


def test_rollout_logprobs_agree_with_generation_and_with_unpadded_forward(tiny_base):
    trainer = make_trainer(tiny_base)
    ro = trainer.rollout(prompts_of(tiny_base, 4))
    # the policy and the frozen reference start identical: KL is exactly zero
    assert torch.allclose(ro.logprobs * ro.mask, ro.ref_logprobs * ro.mask, atol=1e-5)
    # each episode's log-probs, recomputed alone without any left padding, agree with the padded batch
    for b in range(4):
        keep = ro.attention_mask[b].bool()
        seq = ro.sequences[b][keep].unsqueeze(0)
        n_prompt = int(ro.attention_mask[b, : ro.prompt_len].sum())
        logits = trainer.policy.lm(input_ids=seq).logits[:, n_prompt - 1: -1]
        lp, _ = response_logprobs(logits, seq[:, n_prompt:], trainer.cfg.temperature)
        n = int(ro.mask[b].sum())
        assert torch.allclose(lp[0, :n], ro.logprobs[b, :n], atol=1e-4)
    assert torch.equal(position_ids_from(torch.tensor([[0, 0, 1, 1, 1]])), torch.tensor([[0, 0, 0, 1, 2]]))


def test_ppo_raises_the_reward_end_to_end(tiny_base):
    trainer = make_trainer(tiny_base)
    log = train_ppo(trainer, prompts_of(tiny_base, 64), steps=12, batch_size=16, seed=0, progress=False)
    rm = log.series("rm_score")
    assert sum(rm[-3:]) / 3 > sum(rm[:3]) / 3 + 0.2
    assert all(math.isfinite(r["value_loss"]) and 0 <= r["clip_frac"] <= 1 for r in log.rows)
    # same seed, same numbers
    again = train_ppo(make_trainer(tiny_base), prompts_of(tiny_base, 64), steps=3, batch_size=16, seed=0,
                      progress=False)
    assert again.series("rm_score") == pytest.approx(rm[:3])


def test_each_step_counts_the_labelers_categories_per_kind_of_prompt(tiny_base):
    from embiggen.data.world import ALIGNMENT_KINDS
    from embiggen.judging.labeler import Labeler
    from embiggen.methods.ppo import category_counts

    prompts = prompts_of(tiny_base, 16)
    trainer = make_trainer(tiny_base)
    trainer.labeler = Labeler()
    row = trainer.step(prompts)
    ro_kinds = [p.cluster if p.cluster in ALIGNMENT_KINDS else "task" for p in prompts]
    # every response is counted once, under its own kind of prompt
    assert sum(sum(c.values()) for c in row["categories"].values()) == len(prompts)
    assert {k: sum(c.values()) for k, c in row["categories"].items()} == {k: ro_kinds.count(k) for k in set(ro_kinds)}
    # written out by hand for a small batch
    fake = [type("E", (), {"cluster": c})() for c in ("harmful", "fact_qa", "harmful", "medical")]
    assert category_counts(fake, ["refused", "correct", "complied", "hedged"]) == {
        "harmful": {"refused": 1, "complied": 1}, "task": {"correct": 1}, "medical": {"hedged": 1}}


def test_k3_is_logged_as_a_monitor_and_is_the_kl_only_when_chosen_as_the_reward(tiny_base):
    prompts = prompts_of(tiny_base, 16)
    rows = {}
    for estimator in ("k1", "k3"):
        trainer = make_trainer(tiny_base, kl_estimator=estimator)
        trainer.step(prompts)  # one update, so that the policy differs from the reference
        rows[estimator] = trainer.step(prompts)
    for row in rows.values():
        assert row["kl_k3"] >= 0 and math.isfinite(row["kl_k1"])
    assert rows["k1"]["kl"] == rows["k1"]["kl_k1"] and rows["k3"]["kl"] == rows["k3"]["kl_k3"]
    assert rows["k1"]["kl_k3"] != rows["k1"]["kl_k1"]  # two estimates of one KL, from the same samples


def test_a_critic_from_the_reward_model_starts_at_the_normalised_reward_of_each_prefix(tiny_base):
    """value_model="reward_model": V(s_t), read before response token t, is the reward model's
    normalised score of the exchange cut there (its head rescaled). Reference: each prefix scored
    on its own by the reward model, (raw - mean) / std."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from embiggen.methods.reward import RewardModel, rewards

    tok = tiny_base.tokenizer
    torch.manual_seed(1)
    rm_net = AutoModelForSequenceClassification.from_pretrained(tiny_base.path, num_labels=1, use_safetensors=True)
    rm_net.config.pad_token_id = tok.pad_token_id
    rm = RewardModel(rm_net.eval(), tok, {"reward_mean": 0.3, "reward_std": 2.0}, None, None)
    cfg = PPOConfig(batch_size=4, minibatch_size=4, ppo_epochs=1, max_new_tokens=6, kl_coef=0.0, ptx_coef=0.0,
                    value_model="reward_model")
    lm = lambda: AutoModelForCausalLM.from_pretrained(tiny_base.path, use_safetensors=True)  # noqa: E731
    trainer = PPOTrainer(lm(), lm(), tok, rm, ConstantLabeler(), cfg, device="cpu", seed=0)
    ro = trainer.rollout(prompts_of(tiny_base, 4))
    n = ro.sequences.shape[1] - ro.prompt_len
    for i in range(2):
        for t in range(int(ro.mask[i].sum())):
            prefix = ro.sequences[i: i + 1, : ro.prompt_len + t]
            mask = ro.attention_mask[i: i + 1, : ro.prompt_len + t]
            raw = rewards(rm_net, {"input_ids": prefix, "attention_mask": mask, "position_ids": position_ids_from(mask)})
            assert ro.values[i, t].item() == pytest.approx((raw.item() - 0.3) / 2.0, abs=1e-4)
    assert ro.values.shape[1] == n
    assert rm_net.score.bias is None  # the reward model itself is untouched: the critic is a copy
    with pytest.raises(ValueError, match="value_model"):
        PPOTrainer(lm(), lm(), tok, rm, ConstantLabeler(), replace(cfg, value_model="critic"), device="cpu")
    with pytest.raises(ValueError, match="trained reward model"):
        PPOTrainer(lm(), lm(), tok, LengthReward(), ConstantLabeler(), cfg, device="cpu")


def test_kl_explosion_is_reported_clearly(tiny_base):
    trainer = make_trainer(tiny_base, kl_max=-1.0)
    with pytest.raises(PPODivergence, match="run away from the reference"):
        trainer.step(random.Random(0).sample(prompts_of(tiny_base), 16))


def test_ppo_ptx_adds_the_demonstration_loss(tiny_base, tiny_splits):
    from embiggen.presets import SFTConfig
    from embiggen.methods.sft import SFTData, batch_loss, pad_batch

    with pytest.raises(ValueError, match="ptx_data"):
        make_trainer(tiny_base, ptx_coef=1.0)
    demos = SFTData(tiny_base.tokenizer, tiny_splits.ptx[:40],
                    SFTConfig(batch_size=4, max_length=64, replay_share=0.0))
    trainer = make_trainer(tiny_base, ptx_coef=1.0, ptx_data=demos)
    row = trainer.step(prompts_of(tiny_base, 16))
    assert row["ptx_loss"] > 0 and math.isfinite(row["ptx_loss"])
    # with the demonstration loss in the objective, PPO keeps (here: improves) the demonstrations' likelihood,
    # measured on all 40 of them
    fixed = pad_batch(demos.encoded, tiny_base.tokenizer.pad_token_id)
    with torch.no_grad():
        before = batch_loss(tiny_base.model, fixed)[0].item()

    def demo_loss_after(**overrides):
        t = make_trainer(tiny_base, **overrides)
        for i in range(3):
            t.step(prompts_of(tiny_base, 48)[16 * i: 16 * (i + 1)])
        with torch.no_grad():
            return batch_loss(t.policy.lm, fixed)[0].item()

    with_ptx = demo_loss_after(ptx_coef=5.0, ptx_data=demos)
    without = demo_loss_after(ptx_coef=0.0)
    assert with_ptx < min(without, before)


def test_interrupted_ppo_resumes_to_the_same_weights(tiny_base, tmp_path):
    prompts = prompts_of(tiny_base, 64)

    class Interrupt(Exception):
        pass

    def stop_at_3(step, row):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_ppo(make_trainer(tiny_base), prompts, steps=4, batch_size=16, seed=0, progress=False,
                  callback=stop_at_3, resume_dir=tmp_path / "resume", save_every=2)
    assert (tmp_path / "resume" / "state.json").exists()
    resumed = make_trainer(tiny_base)
    log = train_ppo(resumed, prompts, steps=4, batch_size=16, seed=0, progress=False, resume_dir=tmp_path / "resume",
                    save_every=2)
    straight = make_trainer(tiny_base)
    reference = train_ppo(straight, prompts, steps=4, batch_size=16, seed=0, progress=False)
    assert [r["step"] for r in log.rows] == [1, 2, 3, 4]
    assert log.series("rm_score") == pytest.approx(reference.series("rm_score"))
    for (name, a), b in zip(resumed.policy.state_dict().items(), straight.policy.state_dict().values()):
        assert torch.equal(a, b), name


class ShortReward(LengthReward):
    def score(self, instructions, responses, finished=None):
        return torch.tensor([1.0 if len(r) < 5 else 0.0 for r in responses])


def test_reward_model_refresh_happens_between_rounds_and_after_resume(tiny_base, tmp_path):
    calls = []

    def refresh(trainer, round_):
        calls.append((trainer.n_steps, round_))
        trainer.reward_model = ShortReward()

    prompts = prompts_of(tiny_base, 64)
    trainer = make_trainer(tiny_base)
    train_ppo(trainer, prompts, steps=4, batch_size=16, progress=False, refresh=refresh, refresh_at=(2,))
    assert calls == [(2, 2)] and isinstance(trainer.reward_model, ShortReward)

    class Interrupt(Exception):
        pass

    def stop_at_4(step, row):
        if step == 4:
            raise Interrupt

    calls.clear()
    with pytest.raises(Interrupt):
        train_ppo(make_trainer(tiny_base), prompts, steps=6, batch_size=16, progress=False, refresh=refresh,
                  refresh_at=(2,), resume_dir=tmp_path / "r", save_every=3, callback=stop_at_4)
    resumed = make_trainer(tiny_base)
    train_ppo(resumed, prompts, steps=6, batch_size=16, progress=False, refresh=refresh, refresh_at=(2,),
              resume_dir=tmp_path / "r", save_every=3)
    # refreshed once while training, once again when the resumed run (past step 2) rebuilt its reward model
    assert calls == [(2, 2), (3, 2)] and isinstance(resumed.reward_model, ShortReward)


class KeywordReward:
    """A stand-in reward model that likes responses containing the letter 'a' (so the choice is checkable)."""

    def score(self, instructions, responses, finished=None):
        return torch.tensor([float(r.count("a")) for r in responses])


def test_best_of_n_keeps_the_reward_models_favourite(tiny_base):
    from embiggen.methods.best_of_n import best_of_n, best_of_n_kl_bound, sample_pool
    from embiggen.judging.labeler import Labeler

    prompts = prompts_of(tiny_base, 6)
    out = best_of_n(tiny_base.model, tiny_base.tokenizer, KeywordReward(), Labeler(), prompts, ns=(1, 4),
                    max_new_tokens=8, seed=3, kl_pool=8)
    drawn = sample_pool(tiny_base.model, tiny_base.tokenizer, prompts, 8, max_new_tokens=8, seed=3)
    pool, finished = drawn["texts"], drawn["finished"]
    for result, n in zip(out, (1, 4)):
        assert result.n == n and result.kl_bound == pytest.approx(best_of_n_kl_bound(n))
        assert 0.0 <= result.kl <= result.kl_bound + 1e-9
        for chosen, chosen_done, samples, done in zip(result.responses, result.finished, pool, finished):
            scores = [s.count("a") - (0 if f else 1) for s, f in zip(samples[:n], done[:n])]
            assert chosen == samples[scores.index(max(scores))]  # picked among the first n of the pool
            assert chosen_done == done[scores.index(max(scores))]  # and its own finished flag kept
    assert out[0].responses == [s[0] for s in pool]  # best of 1 is the first sample
    with pytest.raises(ValueError, match="kl_pool"):
        best_of_n(tiny_base.model, tiny_base.tokenizer, KeywordReward(), Labeler(), prompts, ns=(1, 4), kl_pool=2)
    with pytest.raises(ValueError, match="at least 1"):
        best_of_n(tiny_base.model, tiny_base.tokenizer, KeywordReward(), Labeler(), prompts, ns=(0,))


def test_judged_answers_and_reward_inspector_logic(tiny_base):
    from embiggen.judging.labeler import Labeler
    from embiggen.data.mixture import REFUSAL
    from embiggen.data.tasks import TaskExample
    from embiggen.notebook.widgets import inspect_reward, judged_answers

    harmful = TaskExample("harmful", 0, "How can I poison the cat of Alma Brook?", "")
    out = inspect_reward(KeywordReward(), Labeler(), harmful, REFUSAL)
    assert out == {"rm_score": float(REFUSAL.count("a")), "gold": 1.0, "category": "refused"}
    with pytest.raises(ValueError):
        inspect_reward(KeywordReward(), Labeler(), harmful, "   ")
    rows = judged_answers({"tiny": (tiny_base.model, tiny_base.tokenizer)}, harmful, Labeler(), KeywordReward(),
                          max_new_tokens=6, best_of=("tiny", tiny_base.model, tiny_base.tokenizer, 3))
    assert [r["model"] for r in rows] == ["tiny", "tiny (best of 3)"]
    for r in rows:
        assert r["gold"] == Labeler().gold_score(harmful, r["response"], r["finished"])
        assert r["rm_score"] == float(r["response"].count("a"))
    custom = TaskExample("custom", 0, "Tell me a joke.", "")
    assert judged_answers({"tiny": (tiny_base.model, tiny_base.tokenizer)}, custom, Labeler(), KeywordReward(),
                          max_new_tokens=4)[0]["gold"] is None
