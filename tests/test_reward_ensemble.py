"""Reward-model ensembles: each conservative combination against the formula written out."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from embiggen.methods.reward_ensemble import RewardEnsemble, conservative, disagreement


class Fixed:
    """A stand-in reward model whose normalised score of response i is scores[i]."""

    def __init__(self, name, scores):
        self.path, self.tokenizer, self.info, self.values = Path(name), None, {"train_seconds": 2.0}, scores

    def score(self, instructions, responses, finished=None, batch_size=64):
        return torch.tensor([self.values[r] for r in responses], dtype=torch.float32)


def test_each_combination_matches_the_formula_written_out():
    scores = torch.tensor([[1.0, -0.5, 2.0], [0.0, -0.5, -1.0], [2.0, -0.5, 0.5]])
    columns = [[1.0, 0.0, 2.0], [-0.5, -0.5, -0.5], [2.0, -1.0, 0.5]]
    mean = [sum(c) / 3 for c in columns]
    var = [sum((x - m) ** 2 for x in c) / 3 for c, m in zip(columns, mean)]
    assert conservative(scores, "mean").tolist() == pytest.approx(mean, abs=1e-6)
    assert conservative(scores, "worst").tolist() == pytest.approx([min(c) for c in columns], abs=1e-6)
    assert conservative(scores, "uwo", 0.5).tolist() == pytest.approx([m - 0.5 * v for m, v in zip(mean, var)],
                                                                      abs=1e-6)
    with pytest.raises(ValueError, match="unknown ensemble mode 'median'"):
        conservative(scores, "median")


def test_the_ensemble_scores_as_a_reward_model_and_names_its_disagreements():
    members = [Fixed("rm-a", {"x": 1.0, "y": 0.0}), Fixed("rm-b", {"x": 1.0, "y": 2.0})]
    ensemble = RewardEnsemble(members, mode="worst")
    assert ensemble.score(["q", "q"], ["x", "y"]).tolist() == [1.0, 0.0]
    assert ensemble.info["train_seconds"] == 4.0 and ensemble.path.name.startswith("ensemble2-worst-1-")
    assert RewardEnsemble(members[::-1], mode="worst").path != ensemble.path  # the members decide the name
    rows = disagreement(ensemble, ["q", "q"], ["x", "y"], top=1)
    assert [r["response"] for r in rows] == ["y"] and rows[0]["members"] == [0.0, 2.0]
    assert rows[0]["spread"] == pytest.approx(1.0) and rows[0]["reward"] == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        RewardEnsemble(members[:1])
    with pytest.raises(ValueError, match="unknown ensemble mode"):
        RewardEnsemble(members, mode="best")


def test_members_are_the_stage_reward_model_and_others_under_their_own_keys(monkeypatch):
    import embiggen.chain as chain
    from embiggen.presets import get_preset

    monkeypatch.setattr(chain, "train_or_load", lambda path, load, train, force=False: path)
    sft = SimpleNamespace(path=Path("/cache/sft"), world=None)
    smoke = get_preset("smoke")
    paths = [chain.train_or_load_reward(smoke, sft=sft, device="cpu", member=i) for i in range(3)]
    assert paths[0] == chain.train_or_load_reward(smoke, sft=sft, device="cpu")  # member 0 is the stage's own
    assert len(set(paths)) == 3 and all(f"-member{i}-" in p.name for i, p in enumerate(paths) if i)


def test_the_inspector_shows_each_members_score_and_fills_in_the_answers_it_is_given(tiny_splits):
    from embiggen.judging.labeler import Labeler
    from embiggen.notebook.widgets import RewardInspector, inspect_reward

    harmful = [e for e in tiny_splits.ppo_eval if e.cluster == "harmful"][:2]
    answers = {harmful[0].instruction: "x", harmful[1].instruction: "y"}
    ensemble = RewardEnsemble([Fixed("rm-a", {"x": 1.0, "y": 0.0, "z": 0.5}), Fixed("rm-b", {"x": 1.0, "y": 2.0,
                                                                                           "z": -0.5})], mode="worst")
    out = inspect_reward(ensemble, Labeler(), harmful[1], "y")
    assert out["members"] == [0.0, 2.0] and out["rm_score"] == 0.0  # the worst member
    w = RewardInspector(ensemble, Labeler(), harmful, answers=answers)
    assert w.response.value == "x" and "<td>+1.00 +1.00</td><td>+1.00</td>" in w.output.value
    w.pick.value = 1  # the other prompt: its answer is filled in and scored
    assert w.response.value == "y" and "<td>+0.00 +2.00</td><td>+0.00</td>" in w.output.value
    assert "worst of them" in w.output.value


def test_the_difference_interval_is_the_bootstrap_written_out():
    from embiggen.judging.evaluate import difference_interval

    a, b = [1.0, 0.5, -1.0, 0.0, 1.0, 0.25], [0.0, 0.5, -0.5, -1.0, 1.0, 0.0]
    got = difference_interval(a, b, n_resamples=200, seed=3)
    diffs = [x - y for x, y in zip(a, b)]
    picks = torch.randint(len(diffs), (200, len(diffs)), generator=torch.Generator().manual_seed(3)).tolist()
    means = sorted(sum(diffs[i] for i in row) / len(row) for row in picks)
    assert got["difference"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-12)
    # the 2.5th and 97.5th percentiles of the 200 resampled means: positions floor(0.025 * 199), ceil(0.975 * 199)
    assert (got["low"], got["high"]) == pytest.approx((means[4], means[195]), abs=1e-12)
    assert got["low"] <= got["difference"] <= got["high"] and got["n"] == 6
    same = difference_interval([0.5] * 5, [0.25] * 5)  # the same difference on every prompt: no spread
    assert same["low"] == same["high"] == same["difference"] == 0.25
    with pytest.raises(ValueError, match="paired scores needed"):
        difference_interval([1.0], [1.0, 2.0])


def test_the_ensemble_comparison_runs_ppo_against_each_conservative_reward(tiny_preset, cache_dir):
    """At the sweep's lowest beta: the sweep's own run (one reward model), then one per ensemble mode;
    every run's answers rescored by the single reward model, each ensemble run's gold compared to the
    single model's run prompt by prompt, and the single run's answers the members disagree on most."""
    from dataclasses import replace

    from embiggen.chain import train_or_load_reward
    from embiggen.experiments import ensemble_comparison, kl_sweep

    preset = replace(tiny_preset, ppo=replace(tiny_preset.ppo, batch_size=8, minibatch_size=8, max_new_tokens=8),
                     experiments=replace(tiny_preset.experiments, kl_sweep=(0.0, 0.5), sweep_steps=2,
                                         ensemble_members=2, ensemble_modes=("worst",)))
    sweep = kl_sweep(preset, progress=False, device="cpu")
    result = ensemble_comparison(preset, progress=False, device="cpu")
    single, worst = result["runs"]
    assert result["kl_coef"] == 0.0 and single["rows"] == sweep[0]["rows"] and single["mode"] is None
    assert worst["mode"] == "worst" and worst["rows"] != single["rows"]
    assert single["rm_score_single"] == pytest.approx(single["rm_score"], abs=1e-5)  # the same reward model
    rm = train_or_load_reward(preset, progress=False, device="cpu")
    answers = worst["answers"]
    rescored = rm.score([r["instruction"] for r in answers], [r["response"] for r in answers],
                        [r["finished"] for r in answers]).mean().item()
    assert worst["rm_score_single"] == pytest.approx(rescored, abs=1e-5)
    d = worst["gold_difference"]
    plain = sum(x["gold"] - y["gold"] for x, y in zip(answers, single["answers"])) / len(answers)
    assert d["difference"] == pytest.approx(plain, abs=1e-9) and d["low"] <= plain <= d["high"]
    assert worst["reward_seconds"] == pytest.approx(sum(m.info["train_seconds"] for m in result["ensemble"].members))
    spreads = [r["spread"] for r in result["disagreements"]]
    assert spreads == sorted(spreads, reverse=True) and all("gold" in r for r in result["disagreements"])
