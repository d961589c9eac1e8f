"""Several reward models instead of one, against over-optimisation.

A reward model is right where its training pairs were and guesses elsewhere; PPO, pushed hard
(a small KL coefficient), finds the answers where it guesses high. Reward models trained on the
same pairs from different random starts agree where the pairs taught them and disagree where
they guess, so their disagreement marks the answers a single reward model cannot be trusted on.
Coste, Anwar, Kirk and Krueger (2023, "Reward Model Ensembles Help Mitigate Overoptimization",
https://arxiv.org/abs/2310.02743) optimise a conservative combination of the members' scores
r_1 ... r_M (each normalised as a single reward model's is: SFT samples score mean 0, std 1):

    mean:   (1/M) sum_i r_i                           (the ensemble's best guess)
    worst:  min_i r_i                                 (worst-case optimisation, WCO)
    uwo:    mean - lambda * (1/M) sum_i (r_i - mean)^2  (uncertainty-weighted optimisation, UWO)

Eisenstein et al. (2023, "Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate
Reward Hacking", https://arxiv.org/abs/2312.09244) found the same, and that members trained from
the same start share their errors: the ensemble narrows reward hacking, it does not close it.

`RewardEnsemble` stands where a `RewardModel` stands for PPO (its `score`); `disagreement` finds
the answers on which its members part most, for the reward inspector.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

MODES = ("mean", "worst", "uwo")


def conservative(scores: torch.Tensor, mode: str = "uwo", lam: float = 1.0) -> torch.Tensor:
    """The members' scores (members x answers) combined into one per answer (`MODES`)."""
    if mode not in MODES:
        raise ValueError(f"unknown ensemble mode {mode!r}; valid: {', '.join(MODES)}")
    if mode == "mean":
        return scores.mean(0)
    if mode == "worst":
        return scores.min(0).values
    return scores.mean(0) - lam * scores.var(0, unbiased=False)


class RewardEnsemble:
    """Reward models trained on the same pairs from different seeds, scored together."""

    def __init__(self, members: list, mode: str = "uwo", lam: float = 1.0):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 reward models, got {len(members)}")
        conservative(torch.zeros(2, 1), mode, lam)  # the mode is checked here, not at the first PPO step
        self.members, self.mode, self.lam = list(members), mode, lam
        names = "+".join(m.path.name for m in self.members)
        self.path = Path(f"ensemble{len(members)}-{mode}-{lam:g}-{hashlib.sha256(names.encode()).hexdigest()[:12]}")
        self.tokenizer = self.members[0].tokenizer
        self.info = {"members": [m.path.name for m in self.members], "mode": mode, "lam": lam,
                     "train_seconds": sum(m.info.get("train_seconds", 0.0) for m in self.members)}

    def member_scores(self, instructions: list[str], responses: list[str], finished: list[bool] | None = None,
                      batch_size: int = 64) -> torch.Tensor:
        """Every member's normalised score of every exchange: (members, exchanges)."""
        return torch.stack([m.score(instructions, responses, finished, batch_size) for m in self.members])

    def score(self, instructions: list[str], responses: list[str], finished: list[bool] | None = None,
              batch_size: int = 64) -> torch.Tensor:
        """The conservative reward (`conservative` of the members' normalised scores)."""
        return conservative(self.member_scores(instructions, responses, finished, batch_size), self.mode, self.lam)


def disagreement(ensemble: RewardEnsemble, instructions: list[str], responses: list[str],
                 finished: list[bool] | None = None, top: int = 8) -> list[dict]:
    """The `top` exchanges on which the members' scores spread most (their standard deviation),
    with every member's score, the mean and the conservative reward."""
    scores = ensemble.member_scores(instructions, responses, finished)
    spread = scores.std(0, unbiased=False)
    combined = conservative(scores, ensemble.mode, ensemble.lam)
    order = torch.argsort(spread, descending=True)[:top].tolist()
    return [{"instruction": instructions[i], "response": responses[i], "spread": spread[i].item(),
             "members": scores[:, i].tolist(), "mean": scores[:, i].mean().item(), "reward": combined[i].item()}
            for i in order]
