"""Best-of-n: the simple baseline to try before PPO.

"Try something simple first." Sample n responses from the SFT model and keep the one the
reward model scores highest (Stiennon et al. 2020; Nakano et al. 2021 call it rejection
sampling). No training at all — and the KL from the SFT model is known in closed form,

    KL(pi_best-of-n || pi_SFT) = log n - (n - 1) / n,

so best-of-n and PPO can be drawn on the same axes: gold score against KL. Gao, Schulman &
Hilton (2022, https://arxiv.org/abs/2210.10760) plotted exactly this to measure how fast
optimising a proxy reward stops helping the true one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .labeler import Labeler
from .ppo import best_of_n_kl
from .preferences import sample_responses


@dataclass
class BestOfN:
    n: int
    kl: float
    gold: float        # mean gold score of the chosen responses
    rm_score: float    # mean reward-model score of the chosen responses
    responses: list[str]


def best_of_n(model, tokenizer, reward_model, labeler: Labeler, prompts, ns=(1, 2, 4, 8, 16), temperature: float = 1.0,
              max_new_tokens: int = 32, seed: int = 0) -> list[BestOfN]:
    """For every n in `ns`: the reward model's favourite of the first n samples per prompt.
    One pool of max(ns) samples per prompt serves every n (the first n of the pool), so
    the curve is not jagged with sampling noise."""
    if not ns or min(ns) < 1:
        raise ValueError(f"every n must be at least 1, got {ns}")
    pool_size = max(ns)
    samples, finished = sample_responses(model, tokenizer, prompts, pool_size, temperature, max_new_tokens, seed)
    instructions = [e.instruction for e in prompts for _ in range(pool_size)]
    flat = [y for ys in samples for y in ys]
    scores = reward_model.score(instructions, flat).view(len(prompts), pool_size)
    unfinished = torch.tensor([[not f for f in fs] for fs in finished], dtype=torch.float)
    scores_for_choice = scores - unfinished  # a response that never ends is not a good pick either
    out = []
    for n in sorted(ns):
        best = scores_for_choice[:, :n].argmax(1).tolist()
        chosen = [samples[i][j] for i, j in enumerate(best)]
        gold = [labeler.gold_score(e, samples[i][j], finished[i][j]) for i, (e, j) in enumerate(zip(prompts, best))]
        rm = [scores[i, j].item() for i, j in enumerate(best)]
        out.append(BestOfN(n, best_of_n_kl(n), sum(gold) / len(gold), sum(rm) / len(rm), chosen))
    return out
