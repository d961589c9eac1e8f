"""Gao et al.'s functional forms: the fit recovers known coefficients and agrees with a library solve."""

import math
import random

import pytest
import torch

from embiggen.judging.overoptimisation import gao_curve, gao_fit


@pytest.mark.parametrize("form, curve", [("best_of_n", lambda d, a, b: d * (a - b * d)),
                                         ("rl", lambda d, a, b: d * (a - b * math.log(d)))])
def test_the_fit_recovers_the_coefficients_that_made_the_points(form, curve):
    kls = [0.0, 0.1, 0.4, 0.9, 1.6, 2.5]
    points = [(kl, curve(math.sqrt(kl), 0.8, 0.3) if kl else 0.0) for kl in kls]
    fit = gao_fit(points, form)
    assert fit["alpha"] == pytest.approx(0.8, abs=1e-9) and fit["beta"] == pytest.approx(0.3, abs=1e-9)
    assert fit["n_points"] == 5 and fit["rmse"] == pytest.approx(0.0, abs=1e-9)  # KL = 0 carries no information
    assert gao_curve(fit, kls) == pytest.approx([y for _, y in points], abs=1e-9)


def test_noisy_points_give_the_least_squares_solution():
    rng = random.Random(0)
    points = [(kl, 0.5 * math.sqrt(kl) - 0.2 * kl + rng.gauss(0, 0.05)) for kl in (0.2, 0.5, 1.0, 1.5, 2.0, 3.0)]
    fit = gao_fit(points, "best_of_n")
    d = torch.tensor([math.sqrt(kl) for kl, _ in points], dtype=torch.float64)
    X = torch.stack([d, -d * d], dim=1)
    y = torch.tensor([g for _, g in points], dtype=torch.float64)[:, None]
    reference = torch.linalg.lstsq(X, y).solution.squeeze(1).tolist()
    assert [fit["alpha"], fit["beta"]] == pytest.approx(reference, abs=1e-9)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown form"):
        gao_fit([(1.0, 0.1), (2.0, 0.2)], "ppo")
    with pytest.raises(ValueError, match="at least two points"):
        gao_fit([(0.0, 0.0), (1.0, 0.2)], "rl")
