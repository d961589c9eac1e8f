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
answer under the largest of n uniform draws, so a *score level* (all the answers with one
score) that starts at a and has probability P is picked with probability

    q = (a + P)^n - a^n,

and where the line is made of many tiny answers, best-of-n's density is n F^(n-1). Answers
that tie (above all, two tokenisations of one text, which the reward model cannot tell
apart) share their level: best-of-n keeps the first of the tied samples it drew, so each
gets the share p / P of q, and the level adds q log(q / P) to
KL(pi_n || pi) = sum_y pi_n(y) log(pi_n(y) / pi(y)). Ordered one after the other instead,
tied answers would count the KL of a choice that is never made.

What we do not know is the line, so we build it from a pool of samples: every distinct
sampled answer is a stretch of its exact probability (the model's own log-probability of its
tokens); the probability that no sample covered, 1 - sum of those, is spread finely along the
line the way Good and Turing (Good 1953) say unseen answers behave, like the answers seen
exactly once: in equal parts just below each singleton (in proportion to all draws where no
answer was seen once). When every answer is new the estimate is the bound; when the pool has
seen every answer it is exact. The pool is larger than the largest n (`kl_pool`, four times
it by default): from only n samples, the estimate at n misses much of the tail that
best-of-n reaches into.
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
    finished: list[bool]  # whether each chosen response ended (EOS), as the labeler judged it


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


def best_of_n_kl_exact(n: int, probs: list[float], scores: list[float]) -> float:
    """KL(best-of-n || pi) when every answer's probability and score are known (`probs` sum to
    1): each score level, lowest first, adds q log(q / P), q = (a + P)^n - a^n."""
    levels: dict[float, float] = {}
    for p, score in zip(probs, scores):
        levels[score] = levels.get(score, 0.0) + p
    kl, position = 0.0, 0.0
    for score in sorted(levels):
        p = levels[score]
        picked = min(1.0, position + p) ** n - position ** n
        if picked > 0 and p > 0:
            kl += picked * math.log(picked / p)
        position = min(1.0, position + p)
    return max(0.0, kl)


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
        answers.setdefault(key, [math.exp(logprob), score, 0])[2] += 1
    unseen = max(0.0, 1.0 - sum(p for p, _, _ in answers.values()))
    singletons = sum(count == 1 for _, _, count in answers.values())
    draws = sum(count for _, _, count in answers.values())
    # Good-Turing: unseen answers are like the answers seen once (like all draws if none was seen once)
    share = (lambda count: (count == 1) / singletons) if singletons else (lambda count: count / draws)
    levels: dict[float, list[float]] = {}  # score -> [probability of its answers, unseen mass just below it]
    for p, score, count in answers.values():
        level = levels.setdefault(score, [0.0, 0.0])
        level[0] += p
        level[1] += unseen * share(count)
    kl, position = 0.0, 0.0
    for score in sorted(levels):  # lowest score first
        p, spread = levels[score]
        end = min(1.0, position + spread)
        kl += _continuous_kl(position, end, n)
        position = end
        picked = min(1.0, position + p) ** n - position ** n
        if picked > 0 and p > 0:
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


def score_pool(reward_model, prompts, pool: dict) -> torch.Tensor:
    """The reward model's score of every sample of `pool`, scored once per distinct (prompt,
    text, finished): samples that read the same (two tokenisations of one text) get the very
    same score, so they tie exactly, as they should."""
    exchanges = [(e.instruction, y, f) for e, ys, fs in zip(prompts, pool["texts"], pool["finished"])
                 for y, f in zip(ys, fs)]
    distinct = list(dict.fromkeys(exchanges))
    scored = reward_model.score([x for x, _, _ in distinct], [y for _, y, _ in distinct],
                                [f for _, _, f in distinct]).tolist()
    lookup = dict(zip(distinct, scored))
    return torch.tensor([lookup[x] for x in exchanges]).view(len(prompts), -1)


def best_of_n(model, tokenizer, reward_model, labeler: Labeler, prompts, ns=(1, 2, 4, 8, 16), temperature: float = 1.0,
              max_new_tokens: int = 32, seed: int = 0, kl_pool: int | None = None) -> list[BestOfN]:
    """For every n in `ns`: the reward model's favourite of the first n samples per prompt,
    its gold score, and its KL from the model (estimated from `kl_pool` samples per prompt,
    default 4 max(ns), and the bound). One pool serves every n (the picks come from its first
    n samples), so the curve is not jagged with sampling noise."""
    if not ns or min(ns) < 1:
        raise ValueError(f"every n must be at least 1, got {ns}")
    pool_size = 4 * max(ns) if kl_pool is None else kl_pool
    if pool_size < max(ns):
        raise ValueError(f"kl_pool must be at least the largest n ({max(ns)}), got {pool_size}")
    pool = sample_pool(model, tokenizer, prompts, pool_size, temperature, max_new_tokens, seed)
    samples, finished = pool["texts"], pool["finished"]
    scores = score_pool(reward_model, prompts, pool)
    unfinished = torch.tensor([[not f for f in fs] for fs in finished], dtype=torch.float)
    scores_for_choice = scores - unfinished  # a response that never ends is not a good pick either
    out = []
    for n in sorted(ns):
        best = scores_for_choice[:, :n].argmax(1).tolist()  # the first of tied samples, as the estimate assumes
        chosen = [samples[i][j] for i, j in enumerate(best)]
        done = [finished[i][j] for i, j in enumerate(best)]
        gold = [labeler.gold_score(e, y, f) for e, y, f in zip(prompts, chosen, done)]
        rm = [scores[i, j].item() for i, j in enumerate(best)]
        kls = [best_of_n_kl_estimate(n, pool["logprobs"][i], scores_for_choice[i].tolist(), pool["keys"][i])
               for i in range(len(prompts))]
        out.append(BestOfN(n, sum(kls) / len(kls), best_of_n_kl_bound(n), sum(gold) / len(gold), sum(rm) / len(rm),
                           chosen, done))
    return out
