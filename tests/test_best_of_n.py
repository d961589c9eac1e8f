"""The best-of-n KL estimate, against the exact KL computed by brute force."""

import itertools
import math

import pytest

from embiggen.methods.best_of_n import best_of_n_kl_bound, best_of_n_kl_estimate


def exact_best_of_n_kl(probs: list[float], scores: list[float], n: int) -> float:
    """Enumerate every n-tuple of draws, take the best by score (first one on a tie of the same
    answer), add up the probability of each answer being picked, and compute the KL."""
    picked = [0.0] * len(probs)
    for draw in itertools.product(range(len(probs)), repeat=n):
        weight = math.prod(probs[i] for i in draw)
        best = max(draw, key=lambda i: scores[i])
        picked[best] += weight
    return sum(q * math.log(q / p) for q, p in zip(picked, probs) if q > 0)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_exact_when_the_pool_has_seen_every_answer(n):
    probs, scores = [0.5, 0.3, 0.15, 0.05], [1.0, 3.0, 2.0, -1.0]
    pool = [0, 0, 1, 2, 3, 0, 1]  # every answer drawn at least once (repeats allowed)
    estimate = best_of_n_kl_estimate(n, [math.log(probs[i]) for i in pool], [scores[i] for i in pool],
                                     [f"answer {i}" for i in pool])
    assert estimate == pytest.approx(exact_best_of_n_kl(probs, scores, n), abs=1e-9)
    assert estimate <= best_of_n_kl_bound(n) + 1e-12


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_the_bound_when_every_answer_is_new(n):
    """Tiny, all different answers: nothing repeats, and the estimate is log n - (n - 1) / n."""
    pool = range(16)
    estimate = best_of_n_kl_estimate(n, [math.log(1e-12)] * 16, [float(i) for i in pool], list(pool))
    assert estimate == pytest.approx(best_of_n_kl_bound(n), abs=1e-6)


def test_two_equally_likely_answers_never_exceed_log_2():
    """Beirami et al.'s counterexample to the formula: two answers, each half the time."""
    pool = ["a", "b", "a", "b"]
    for n in (2, 4, 8, 12):
        estimate = best_of_n_kl_estimate(n, [math.log(0.5)] * 4, [0.0, 1.0, 0.0, 1.0], pool)
        assert estimate == pytest.approx(exact_best_of_n_kl([0.5, 0.5], [0.0, 1.0], n), abs=1e-9)
        assert estimate < math.log(2)
    assert math.log(2) < best_of_n_kl_bound(8)  # while the formula keeps growing with n


def test_bad_input():
    with pytest.raises(ValueError, match="at least 1"):
        best_of_n_kl_estimate(0, [0.0], [0.0], ["a"])
    with pytest.raises(ValueError, match="one key"):
        best_of_n_kl_estimate(2, [0.0, 0.0], [0.0], ["a"])
