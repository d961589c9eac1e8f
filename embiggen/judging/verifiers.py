"""Verifiable rewards: answers a program can check, and how often a model gets them right.

RLHF learns its reward from people's preferences, and a learned reward can be fooled. Many
tasks need no such model: the answer to "What is 7 plus 5?" can be *checked*. Reinforcement
learning with verifiable rewards (Lambert et al. 2024, Tülu 3, https://arxiv.org/abs/2411.15124;
DeepSeekMath, Shao et al. 2024, https://arxiv.org/abs/2402.03300; DeepSeek-R1, 2025) rewards an
answer 1 if a program says it is right and 0 otherwise:

    r(x, y) = 1[ y is correct for x ]

Here the program is the exact-match scorer every evaluation in the course uses (`exact_match`:
the first line of the answer, lower case, surrounding punctuation stripped, must equal the
reference answer the world's generator computed). So the reward RL optimises is exactly the
accuracy the notebooks report, and nothing else — which is its strength and, when the checker is
loose, its weakness (`contains_reward`).

**pass@k** (Chen et al. 2021, https://arxiv.org/abs/2107.03374) is the chance that at least one
of k sampled answers is correct. From n >= k samples of which c are correct, the unbiased
estimator is

    pass@k = 1 - C(n - c, k) / C(n, k)

(the share of k-subsets of the n samples that hold no correct answer, taken from 1). A model
whose pass@16 is far above its greedy accuracy often *knows* an answer it does not put first;
that headroom is what RL with a verifier can turn into greedy accuracy.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from embiggen.data.tasks import TaskExample
from embiggen.judging.evaluate import exact_match, first_line, key_answer, normalize
from embiggen.lm.generate import chat_responses


def exact_reward(example: TaskExample, response) -> float:
    """1.0 if `response` is the reference answer by the evaluation's exact-match scorer, else 0.0.
    An empty, malformed or non-text answer scores 0; it never raises."""
    if not isinstance(response, str) or not response.strip():
        return 0.0
    return float(exact_match(response, example.answer))


def contains_reward(example: TaskExample, response) -> float:
    """A loose checker, for the lesson on what a verifier cannot see: 1.0 if the reference answer
    appears *anywhere* in the response (a bare ``answer in response``, both normalised as the
    scorer normalises them), else 0.0. "apples, rice" passes for the reference "apples, rice";
    so does "apples, rice, tea", and "2, 3, 4" passes for "3". Not text, or no reference: 0."""
    if not isinstance(response, str) or not normalize(example.answer):
        return 0.0
    return float(normalize(example.answer) in normalize(response))


def verifier_for(name: str):
    """`"exact"`: the scorer evaluation uses; `"loose"`: any answer that contains the reference
    passes (`contains_reward`). Either for every cluster."""
    table = {"exact": exact_reward, "loose": contains_reward}
    if name not in table:
        raise ValueError(f"unknown verifier {name!r}; valid verifiers: {', '.join(table)}")
    return table[name]


# ---------------------------------------------------------------------------------------
# pass@k and majority voting from n sampled answers per prompt
# ---------------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. (2021)'s unbiased estimator of pass@k from n samples, c of them correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def sample_answers(model, tokenizer, examples: list[TaskExample], n: int, max_new_tokens: int = 32,
                   temperature: float = 1.0, seed: int = 0, batch_size: int = 256,
                   desc: str | None = None) -> list[list[str]]:
    """`n` sampled answers to each example (chat template, T = `temperature`), prompt by prompt."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    repeated = [e.instruction for e in examples for _ in range(n)]
    texts, _ = chat_responses(model, tokenizer, repeated, max_new_tokens=max_new_tokens, greedy=False,
                              temperature=temperature, seed=seed, batch_size=batch_size, desc=desc)
    return [texts[i * n:(i + 1) * n] for i in range(len(examples))]


def pass_at_k_curve(examples: list[TaskExample], samples: list[list[str]], ks=(1, 4, 16), verifier=exact_reward) -> dict:
    """pass@k for each k, averaged over prompts, overall and per cluster, from `samples` (n per
    prompt, n >= max(ks)); and each prompt's number of correct samples."""
    correct = [sum(verifier(e, y) == 1.0 for y in ys) for e, ys in zip(examples, samples)]
    n = min(len(ys) for ys in samples)
    rows = {k: [pass_at_k(len(ys), c, k) for ys, c in zip(samples, correct)] for k in ks if k <= n}
    clusters = sorted({e.cluster for e in examples})
    return {
        "pass_at_k": {k: sum(v) / len(v) for k, v in rows.items()},
        "per_cluster": {c: {k: _mean([p for p, e in zip(v, examples) if e.cluster == c]) for k, v in rows.items()}
                        for c in clusters},
        "n_samples": n, "correct": correct,
    }


def majority_answer(answers: list[str]) -> str:
    """Self-consistency (Wang et al. 2022, https://arxiv.org/abs/2203.11171): the most common
    answer among samples, compared as the scorer compares them (first line, normalised); a tie
    goes to the answer that came first."""
    keys = [normalize(first_line(a)) for a in answers]
    counts = Counter(keys)
    best = max(counts.values())
    return next(a for a, k in zip(answers, keys) if counts[k] == best)


def majority_vote_accuracy(examples: list[TaskExample], samples: list[list[str]], k: int,
                           verifier=exact_reward) -> float:
    """Accuracy of the majority answer among the first `k` samples of each prompt."""
    return _mean([verifier(e, majority_answer(ys[:k])) for e, ys in zip(examples, samples)])


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


class VerifierReward:
    """A verifier in a reward model's place, for PPO (`score(instructions, responses, finished)`,
    as `RewardModel.score`): 1.0 for an answer the verifier accepts, else 0.0. It knows the tasks
    it may be asked about (`examples`); an unknown instruction is an error, never a silent 0."""

    def __init__(self, verifier, examples: list[TaskExample]):
        self.verifier = verifier
        self.examples = {e.instruction: e for e in examples}

    def score(self, instructions: list[str], responses: list[str], finished=None) -> torch.Tensor:
        missing = [x for x in instructions if x not in self.examples]
        if missing:
            raise KeyError(f"the verifier has no task for {missing[0]!r}")
        return torch.tensor([self.verifier(self.examples[x], y) for x, y in zip(instructions, responses)])
