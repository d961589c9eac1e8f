"""The best-of-n KL estimate, against the exact KL computed by brute force."""

import itertools
import math
import random

import pytest

from embiggen.methods.best_of_n import best_of_n_kl_bound, best_of_n_kl_estimate, best_of_n_kl_exact


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


def test_the_exact_kl_by_score_levels_matches_brute_force():
    probs, scores = [0.4, 0.1, 0.3, 0.2], [1.0, 2.0, 2.0, 0.0]  # two answers tie (one text, two tokenisations)
    for n in (1, 2, 3, 4):
        assert best_of_n_kl_exact(n, probs, scores) == pytest.approx(exact_best_of_n_kl(probs, scores, n), abs=1e-12)


@pytest.mark.parametrize("n", [2, 3, 6])
def test_tied_answers_share_their_level_whatever_order_they_were_drawn_in(n):
    """Two tokenisations of one text score the same: best-of-n keeps the first of them it drew, so
    each is picked in proportion to its probability. Treated as two levels, one above the other, the
    estimate depended on which came first in the pool (0.838 or 0.812 nats here at n = 6, for 0.789)."""
    probs, scores = [0.45, 0.05, 0.3, 0.2], [1.0, 1.0, 0.0, 2.0]
    exact = exact_best_of_n_kl(probs, scores, n)
    for pool in ([0, 1, 2, 3], [1, 0, 3, 2], [3, 2, 1, 0, 0]):
        estimate = best_of_n_kl_estimate(n, [math.log(probs[i]) for i in pool], [scores[i] for i in pool], pool)
        assert estimate == pytest.approx(exact, abs=1e-9)


def long_tailed(seed: int, head: int, tail: int, head_mass: float, exponent: float, tail_scores: str):
    """A few likely answers and a Zipf tail of unlikely ones, with seeded scores: the tail's below the
    head's ("low") or anywhere ("random"), the shapes on which a pool of n samples reads low."""
    rng = random.Random(seed)
    head_p = [rng.random() for _ in range(head)]
    head_p = [p / sum(head_p) * head_mass for p in head_p]
    tail_w = [1 / (k + 1) ** exponent for k in range(tail)]
    tail_p = [w / sum(tail_w) * (1 - head_mass) for w in tail_w]
    if tail_scores == "low":
        scores = [0.5 + 0.5 * rng.random() for _ in head_p] + [0.6 * rng.random() for _ in tail_p]
    else:
        scores = [rng.random() for _ in head_p + tail_p]
    return head_p + tail_p, scores


@pytest.mark.parametrize("shape", [(1, 2, 1000, 0.47, 0.8, "low"), (2, 1, 100, 0.51, 1.2, "random"),
                                   (3, 5, 100, 0.73, 1.0, "random")])
def test_the_estimate_from_a_pool_four_times_n_is_within_5_percent(shape):
    """On long-tailed answer distributions, the mean estimate at n = 16 from pools of 64 samples
    against the exact KL. (Measured on these shapes: from pools of 16, up to 12% low; with the unseen
    mass spread like all draws instead of like the singletons, 18% low from pools of 16 and from
    17% low to 8% high from pools of 64.)"""
    probs, scores = long_tailed(*shape)
    n, pool_size, trials = 16, 64, 300
    exact = best_of_n_kl_exact(n, probs, scores)
    rng = random.Random(0)
    estimates = []
    for _ in range(trials):
        pool = rng.choices(range(len(probs)), probs, k=pool_size)
        estimates.append(best_of_n_kl_estimate(n, [math.log(probs[i]) for i in pool], [scores[i] for i in pool], pool))
    assert abs(sum(estimates) / trials / exact - 1) < 0.05
