"""Preference optimisation without a reference model: SimPO.

Meng, Xia and Chen (2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
https://arxiv.org/abs/2405.14734) keep DPO's Bradley-Terry loss on pairs but change the implicit
reward. DPO's, beta log(pi(y|x) / pi_ref(y|x)), needs the reference model and grows with the
answer's length; SimPO's is the *average* log-likelihood of the answer's tokens, scaled,

    r(x, y) = (beta / |y|) log pi(y|x),

which is the quantity generation itself ranks answers by, and needs no reference. A target margin
gamma asks the chosen answer to win by at least that much:

    L_SimPO = - log sigma( (beta / |y_w|) log pi(y_w|x) - (beta / |y_l|) log pi(y_l|x) - gamma ).

The paper's settings are beta of 2 to 2.5 and gamma / beta around 0.5. With no reference there is
no KL term at all: nothing but the starting point and the number of steps keeps the policy near
the SFT model, which notebook 4 measures (the KL to the SFT model of the sampled answers).

The pairs, their encoding, packing and shared prompts are DPO's; the loop is `methods.pairwise`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from embiggen.methods.pairwise import train_on_pairs
from embiggen.presets import SimPOConfig


def simpo_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, chosen_tokens: torch.Tensor,
               rejected_tokens: torch.Tensor, beta: float, gamma: float) -> tuple[torch.Tensor, dict]:
    """The SimPO loss of a batch of pairs from the policy's summed log-probabilities of each
    answer and their numbers of tokens; and the rewards (beta / |y|) log pi(y|x) of both."""
    chosen = beta * chosen_logp / chosen_tokens.clamp(min=1)
    rejected = beta * rejected_logp / rejected_tokens.clamp(min=1)
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return losses.mean(), {"chosen": chosen.detach(), "rejected": rejected.detach()}


def simpo_batch_loss(logp: torch.Tensor, n_tokens: torch.Tensor, batch: dict, cfg: SimPOConfig):
    """SimPO on one batch's answers (chosen first, then rejected, as `dpo.pair_rows` lays them out)."""
    half = logp.shape[0] // 2
    return simpo_loss(logp[:half], logp[half:], n_tokens[:half], n_tokens[half:], cfg.beta, cfg.gamma)


def train_simpo(model, tokenizer, train_pairs, eval_pairs, cfg: SimPOConfig, device=None, seed: int = 0,
                progress: bool = True, resume_dir: Path | None = None, desc: str = "simpo"):
    """Fine-tune `model` (a copy of the SFT model) with the SimPO loss; no reference model. The log
    holds the held-out loss as `val_loss` and, per step, the rewards, their margin and accuracy."""
    return train_on_pairs(model, tokenizer, train_pairs, eval_pairs, cfg, simpo_batch_loss, device=device,
                          seed=seed, progress=progress, resume_dir=resume_dir, desc=desc)
