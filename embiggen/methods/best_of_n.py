"""Best-of-n: the simple baseline to try before PPO.

"Try something simple first." Sample n responses from the SFT model and keep the one the
reward model scores highest (Stiennon et al. 2020; Nakano et al. 2021 call it rejection
sampling). No training at all. To put it on PPO's axes — gold score against KL from the SFT
model, the picture Gao, Schulman & Hilton (2022, https://arxiv.org/abs/2210.10760) used to
measure how fast optimising a proxy reward stops helping the true one — we need its KL.

**The often-quoted formula is a bound.** KL(pi_n || pi) = log n - (n - 1) / n holds only when
no two samples are ever the same answer. Beirami et al. (2024, https://arxiv.org/abs/2401.01879)
show that it is an upper bound, loose when answers repeat — and ours repeat a lot ("I cannot
help with that.", the one right sum). So we *estimate* the KL from the samples.

**The estimate.** Line every possible answer up from the lowest reward to the highest; each
takes a stretch of [0, 1] as long as its probability under the SFT model. Best-of-n picks the
answer under the largest of n uniform draws, so an answer that starts at a and has
probability p is picked with probability

    pi_n(y) = (a + p)^n - a^n,

and where the line is made of many tiny answers, best-of-n's density is n F^(n-1). Then
KL(pi_n || pi) = sum_y pi_n(y) log(pi_n(y) / pi(y)) is a short sum. What we do not know is
the line, so we build it from the pool of samples: every distinct sampled answer is a stretch
of its exact probability (the model's own log-probability of those tokens); the probability
that no sample covered, 1 - sum of those, is spread finely along the line the way the pool's
samples are spread (just below each sampled answer, in proportion to how often it was
drawn). When every answer is new the estimate is the bound; when the pool has seen every
answer it is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from embiggen.judging.labeler import Labeler
from embiggen.lm.generate import decode_responses, episode_logprobs, sample_episodes


@dataclass
class BestOfN:
    n: int
    kl: float          # estimated from the samples (see the module docstring)
    kl_bound: float    # log n - (n - 1) / n, an upper bound
    gold: float        # mean gold score of the chosen responses
    rm_score: float    # mean reward-model score of the chosen responses
    responses: list[str]


def best_of_n_kl_bound(n: int) -> float:
    """log n - (n - 1) / n: KL(best-of-n || base) if no two samples are ever the same answer,
    an upper bound otherwise (Beirami et al. 2024)."""
    return math.log(n) - (n - 1) / n


def _continuous_kl(a: float, b: float, n: int) -> float:
    """KL contribution of a stretch [a, b] of the line made of tiny answers: the integral of
    n F^(n-1) log(n F^(n-1)) dF, i.e. log n (b^n - a^n) + (n - 1) [F^n log F - F^n / n] from a to b."""
    def antiderivative(f: float) -> float:
        return (f ** n * math.log(f) if f > 0 else 0.0) - f ** n / n
    return math.log(n) * (b ** n - a ** n) + (n - 1) * (antiderivative(b) - antiderivative(a))


def best_of_n_kl_estimate(n: int, logprobs: list[float], scores: list[float], keys: list) -> float:
    """KL(best-of-n || pi) for one prompt, from a pool of samples of pi: their exact
    log-probabilities under pi, the scores best-of-n ranks by, and a key that says which
    samples are the same answer (e.g. their token ids). See the module docstring."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not len(logprobs) == len(scores) == len(keys) or not keys:
        raise ValueError("give one log-probability, one score and one key for every sample (at least one)")
    answers: dict = {}  # key -> [probability, score, times drawn]
    for key, logprob, score in zip(keys, logprobs, scores):
        entry = answers.setdefault(key, [math.exp(logprob), score, 0])
        entry[2] += 1
    unseen = max(0.0, 1.0 - sum(p for p, _, _ in answers.values()))
    total = sum(count for _, _, count in answers.values())
    kl, position = 0.0, 0.0
    for p, _, count in sorted(answers.values(), key=lambda e: e[1]):  # lowest score first
        spread = unseen * count / total  # unsampled probability ranked just below this answer
        kl += _continuous_kl(position, min(1.0, position + spread), n)
        position = min(1.0, position + spread)
        if p > 0:
            picked = min(1.0, position + p) ** n - position ** n
            if picked > 0:
                kl += picked * math.log(picked / p)
        position = min(1.0, position + p)
    return max(0.0, kl)  # a KL is never negative; this only drops rounding error


@torch.no_grad()
def sample_pool(model, tokenizer, prompts, pool_size: int, temperature: float = 1.0, max_new_tokens: int = 32,
                seed: int = 0, batch_size: int = 64) -> dict:
    """`pool_size` samples per prompt with the text and finished flag every stage uses
    (`generate.decode_responses`), each sample's log-probability under the model (summed over
    its tokens, EOS included) and its token ids (what makes two samples the same answer)."""
    torch.manual_seed(seed)
    instructions = [e.instruction for e in prompts for _ in range(pool_size)]
    texts, finished, logprobs, keys = [], [], [], []
    for i in range(0, len(instructions), batch_size):
        ep = sample_episodes(model, tokenizer, instructions[i: i + batch_size], max_new_tokens, temperature)
        logprobs += (episode_logprobs(model, ep, temperature) * ep["mask"]).sum(1).tolist()
        keys += [tuple(r[m.bool()].tolist()) for r, m in zip(ep["responses"], ep["mask"])]
        t, f = decode_responses(tokenizer, ep["responses"])
        texts += t
        finished += f
    chunk = lambda xs: [xs[j: j + pool_size] for j in range(0, len(xs), pool_size)]  # noqa: E731
    return {"texts": chunk(texts), "finished": chunk(finished), "logprobs": chunk(logprobs), "keys": chunk(keys)}


def best_of_n(model, tokenizer, reward_model, labeler: Labeler, prompts, ns=(1, 2, 4, 8, 16), temperature: float = 1.0,
              max_new_tokens: int = 32, seed: int = 0) -> list[BestOfN]:
    """For every n in `ns`: the reward model's favourite of the first n samples per prompt,
    its gold score, and its KL from the model (estimated, and the bound). One pool of
    max(ns) samples per prompt serves every n (the first n of the pool), so the curve is
    not jagged with sampling noise."""
    if not ns or min(ns) < 1:
        raise ValueError(f"every n must be at least 1, got {ns}")
    pool_size = max(ns)
    pool = sample_pool(model, tokenizer, prompts, pool_size, temperature, max_new_tokens, seed)
    samples, finished = pool["texts"], pool["finished"]
    instructions = [e.instruction for e in prompts for _ in range(pool_size)]
    flat, flat_finished = [y for ys in samples for y in ys], [f for fs in finished for f in fs]
    scores = reward_model.score(instructions, flat, flat_finished).view(len(prompts), pool_size)
    unfinished = torch.tensor([[not f for f in fs] for fs in finished], dtype=torch.float)
    scores_for_choice = scores - unfinished  # a response that never ends is not a good pick either
    out = []
    for n in sorted(ns):
        best = scores_for_choice[:, :n].argmax(1).tolist()
        chosen = [samples[i][j] for i, j in enumerate(best)]
        gold = [labeler.gold_score(e, samples[i][j], finished[i][j]) for i, (e, j) in enumerate(zip(prompts, best))]
        rm = [scores[i, j].item() for i, j in enumerate(best)]
        kls = [best_of_n_kl_estimate(n, pool["logprobs"][i], scores_for_choice[i].tolist(), pool["keys"][i])
               for i in range(len(prompts))]
        out.append(BestOfN(n, sum(kls) / len(kls), best_of_n_kl_bound(n), sum(gold) / len(gold), sum(rm) / len(rm),
                           chosen))
    return out
