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
