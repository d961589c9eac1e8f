"""Preference optimisation inside SFT: ORPO.

Hong, Lee and Thorne (2024, "ORPO: Monolithic Preference Optimization without Reference Model",
https://arxiv.org/abs/2403.07691) add a preference term to the SFT loss itself. The odds of an
answer are odds(y|x) = P(y|x) / (1 - P(y|x)), with P(y|x) the answer's *average* token
probability, exp((1 / |y|) log pi(y|x)); the loss is the chosen answer's SFT loss plus a log-sigmoid
of the log odds ratio between the two answers:

    L_ORPO = L_SFT(y_w) - lambda log sigma( log odds(y_w|x) - log odds(y_l|x) ),

    log odds(y|x) = a - log(1 - exp(a)),   a = (1 / |y|) log pi(y|x).

No reference model: the SFT term keeps the chosen answers likely while the odds ratio pushes the
rejected ones down. The paper (and TRL's ORPOTrainer) starts from the base model, doing SFT and
preference learning in one stage; here it starts from the SFT model, like DPO, SimPO and KTO,
so that notebook 4 compares the losses and not the starting points. lambda is 0.1 in the paper.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from embiggen.methods.pairwise import train_on_pairs
from embiggen.presets import ORPOConfig


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """log(P / (1 - P)) of P = exp(mean_logp) (< 1): log1p(-exp(a)) keeps it accurate near P = 1."""
    return mean_logp - torch.log1p(-torch.exp(mean_logp.clamp(max=-1e-6)))


def orpo_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, chosen_tokens: torch.Tensor,
              rejected_tokens: torch.Tensor, lam: float) -> tuple[torch.Tensor, dict]:
    """The ORPO loss of a batch of pairs from the policy's summed log-probabilities of each answer
    and their numbers of tokens: the chosen answers' token-mean NLL (SFT's loss) minus lambda times
    the mean log-sigmoid of the log odds ratio; and each answer's lambda * log odds (the rewards)."""
    nll = -chosen_logp.sum() / chosen_tokens.sum().clamp(min=1)
    chosen = log_odds(chosen_logp / chosen_tokens.clamp(min=1))
    rejected = log_odds(rejected_logp / rejected_tokens.clamp(min=1))
    ratio = F.logsigmoid(chosen - rejected)
    return nll - lam * ratio.mean(), {"chosen": lam * chosen.detach(), "rejected": lam * rejected.detach(),
                                      "nll": nll.detach()}


def orpo_batch_loss(logp: torch.Tensor, n_tokens: torch.Tensor, batch: dict, cfg: ORPOConfig):
    """ORPO on one batch's answers (chosen first, then rejected, as `dpo.pair_rows` lays them out)."""
    half = logp.shape[0] // 2
    return orpo_loss(logp[:half], logp[half:], n_tokens[:half], n_tokens[half:], cfg.lam)


def train_orpo(model, tokenizer, train_pairs, eval_pairs, cfg: ORPOConfig, device=None, seed: int = 0,
               progress: bool = True, resume_dir: Path | None = None, desc: str = "orpo"):
    """Fine-tune `model` (a copy of the SFT model) with the ORPO loss; no reference model."""
    return train_on_pairs(model, tokenizer, train_pairs, eval_pairs, cfg, orpo_batch_loss, device=device,
                          seed=seed, progress=progress, resume_dir=resume_dir, desc=desc)
