"""Over-optimisation in numbers: Gao, Schulman & Hilton's functional forms, fitted.

Gao, Schulman & Hilton (2022, "Scaling Laws for Reward Model Overoptimization",
https://arxiv.org/abs/2210.10760) optimised a proxy reward model against a gold one, by best-of-n
and by RL, and found the gold reward gained over the initial policy to follow simple forms in
d = sqrt(KL(pi || pi_init)):

    best-of-n:  R(d) = d (alpha - beta d)
    RL:         R(d) = d (alpha - beta log d)

alpha says how fast gold rises at first, beta how soon the proxy's errors take it back. Our
labeler is a known gold, so notebook 3 can fit both forms to its own points and print the
coefficients. Each form is linear in (alpha, beta), so least squares is a 2 x 2 solve.
"""

from __future__ import annotations

import math

#: form -> (the term alpha multiplies, the term beta multiplies), each a function of d = sqrt(KL)
GAO_FORMS = {"best_of_n": (lambda d: d, lambda d: -d * d), "rl": (lambda d: d, lambda d: -d * math.log(d))}


def gao_fit(points: list[tuple[float, float]], form: str) -> dict:
    """Least squares of one of GAO_FORMS to (KL in nats, gold gained over the starting policy)
    points: the fitted alpha and beta, the root-mean-square error, and how many points (at
    KL > 0) it rests on. Two points determine it exactly; more are fitted."""
    if form not in GAO_FORMS:
        raise ValueError(f"unknown form {form!r}; valid: {', '.join(GAO_FORMS)}")
    used = [(math.sqrt(kl), gain) for kl, gain in points if kl > 0]
    if len(used) < 2:
        raise ValueError(f"a fit of two coefficients needs at least two points with KL > 0, got {len(used)}")
    f, g = GAO_FORMS[form]
    # the normal equations of y = alpha f(d) + beta g(d), solved by hand (2 x 2)
    sff = sum(f(d) ** 2 for d, _ in used)
    sgg = sum(g(d) ** 2 for d, _ in used)
    sfg = sum(f(d) * g(d) for d, _ in used)
    sfy = sum(f(d) * y for d, y in used)
    sgy = sum(g(d) * y for d, y in used)
    det = sff * sgg - sfg ** 2
    if abs(det) < 1e-12:
        raise ValueError("the points do not determine the fit (their KLs are too alike)")
    alpha, beta = (sfy * sgg - sgy * sfg) / det, (sgy * sff - sfy * sfg) / det
    rmse = math.sqrt(sum((alpha * f(d) + beta * g(d) - y) ** 2 for d, y in used) / len(used))
    return {"form": form, "alpha": alpha, "beta": beta, "rmse": rmse, "n_points": len(used)}


def gao_curve(fit: dict, kls: list[float]) -> list[float]:
    """The fitted gain at each KL (nats)."""
    f, g = GAO_FORMS[fit["form"]]
    return [fit["alpha"] * f(math.sqrt(k)) + fit["beta"] * g(math.sqrt(k)) if k > 0 else 0.0 for k in kls]
