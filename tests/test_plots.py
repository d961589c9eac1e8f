"""The plots say what a reader needs: counts, 95% intervals, chance lines, labels that do not collide."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from embiggen.lm.training import TrainLog  # noqa: E402
from embiggen.notebook.plots import (plot_ablation, plot_cluster_accuracy, plot_grouped_rates, plot_loss_curves,  # noqa: E402
                                     plot_pair_accuracy, plot_rates, wilson_interval)


def test_wilson_interval_against_the_formula_written_out():
    k, n, z = 7, 20, 1.96
    p = k / n
    centre = (p + z ** 2 / (2 * n)) / (1 + z ** 2 / n)
    half = z / (1 + z ** 2 / n) * math.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2))
    assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half))
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and 0.25 < high < 0.35  # 0 of 10 is not "certainly 0%"


def _flat(pairs):
    return [x for pair in pairs for x in pair]


def _segments(ax):
    """The vertical two-point lines drawn on `ax` (the intervals), as (x, low, high)."""
    out = []
    for line in ax.get_lines():
        xs, ys = line.get_xdata(), line.get_ydata()
        if len(xs) == 2 and xs[0] == xs[1]:
            out.append((float(xs[0]), float(min(ys)), float(max(ys))))
    return out


def test_grouped_rates_carry_counts_intervals_and_chance():
    fig, ax = plt.subplots()
    plot_grouped_rates(["honest_rate", "refusal_rate_harmful"], {"SFT": [0.2, 0.5], "PPO": [0.9, None]}, ax=ax,
                       counts={"SFT": [40, 20], "PPO": [40, 20]}, chance=0.5)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0].endswith("(n = 40)") and labels[1].endswith("(n = 20)") and "_" not in "".join(labels)
    intervals = sorted(_segments(ax))
    assert len(intervals) == 3  # PPO's missing bar has none
    expected = sorted([wilson_interval(8, 40), wilson_interval(10, 20), wilson_interval(36, 40)])
    assert _flat(sorted((lo, hi) for _, lo, hi in intervals)) == pytest.approx(_flat(expected))
    assert any(line.get_linestyle() == "--" and list(line.get_ydata()) == [0.5, 0.5] for line in ax.get_lines())
    texts = {t.get_text() for t in ax.texts}
    assert {"20%", "50%", "90%"} <= texts
    plt.close(fig)


def test_neighbouring_tick_labels_do_not_overlap():
    labels = ["story_character", "extraction", "fact_qa", "arithmetic", "sentiment", "list_ops", "counting",
              "fact_check"]
    fig, ax = plt.subplots()
    plot_cluster_accuracy({"SFT": {c: 0.5 for c in labels}}, heldout_cluster="fact_check", ax=ax,
                          counts={"SFT": {c: 30 for c in labels}}, chance={"fact_check": 0.5, "sentiment": 0.5})
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.get_xticklabels()]
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))
    plt.close(fig)


def test_rates_and_ablation_show_counts_and_intervals():
    fig, (a, b) = plt.subplots(1, 2)
    plot_rates(["town", "job"], [0.5, 1.0], ax=a, counts=[10, 4])
    assert {"50% of 10", "100% of 4"} <= {t.get_text() for t in a.texts}
    assert _flat(sorted((lo, hi) for _, lo, hi in _segments(a))) == pytest.approx(
        _flat(sorted([wilson_interval(5, 10), wilson_interval(4, 4)])))
    rows = [{"clusters": 0, "heldout_cluster_accuracy": 0.0, "n": 30},
            {"clusters": 3, "heldout_cluster_accuracy": 0.4, "n": 30}]
    plot_ablation(rows, chance=0.5, ax=b)
    assert _flat(sorted(_segments(b))) == pytest.approx(_flat([(0.0, *wilson_interval(0, 30)),
                                                                (3.0, *wilson_interval(12, 30))]))
    plt.close(fig)


def test_pair_accuracy_legend_sits_clear_of_the_bars():
    per_type = {f"type {i}": 0.9 for i in range(6)}
    fig, ax = plt.subplots()
    plot_pair_accuracy(per_type, {k: 20 for k in per_type}, ax=ax)
    fig.canvas.draw()
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= axes.x1  # outside the axes, so it can cover no bar or label
    plt.close(fig)


def test_loss_curves_draw_the_chance_level_and_the_logged_parts_apart():
    log = TrainLog(steps=[1, 2, 3], train_loss=[1.0, 0.9, 0.8], val_steps=[3], val_loss=[0.7],
                   metrics={"response_loss": [2.0, 1.0, 0.5], "replay_loss": [0.6, 0.6, 0.6]})
    fig, ax = plt.subplots()
    plot_loss_curves(log, ax=ax, ylabel="Bradley-Terry loss", chance=(math.log(2), "coin flip: ln 2"))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "coin flip: ln 2" in labels and any("response" in t for t in labels) and any("replayed" in t for t in labels)
    assert not any(t.startswith("train (") for t in labels)  # the mixed loss is not drawn beside its parts
    assert ax.get_ylabel() == "Bradley-Terry loss"
    assert any(list(line.get_ydata()) == [math.log(2), math.log(2)] for line in ax.get_lines())
    plt.close(fig)


def test_gold_against_sqrt_kl_draws_the_points_and_the_fitted_forms():
    from embiggen.judging.overoptimisation import gao_fit
    from embiggen.methods.best_of_n import BestOfN
    from embiggen.notebook.plots import plot_gold_vs_sqrt_kl

    bon = [BestOfN(n, kl, 0.0, gold, 0.0, [], []) for n, kl, gold in [(1, 0.0, 0.1), (4, 0.4, 0.3), (16, 1.0, 0.4)]]
    rl = [{"kl": 0.5, "gold_sampled": 0.35, "label": "a"}, {"kl": 2.0, "gold_sampled": 0.45, "label": "b"}]
    fits = {"best_of_n": gao_fit([(b.kl, b.gold - 0.1) for b in bon], "best_of_n"),
            "rl": gao_fit([(p["kl"], p["gold_sampled"] - 0.1) for p in rl], "rl")}
    ax = plot_gold_vs_sqrt_kl(bon, rl, fits, start_gold=0.1)
    xs = sorted(x for line in ax.get_lines()[:2] for x in line.get_xdata())
    assert xs == pytest.approx(sorted([0.0, math.sqrt(0.4), 1.0, math.sqrt(0.5), math.sqrt(2.0)]))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("alpha=" in t and "d (alpha - beta d)" in t for t in legend)
    assert any("log d" in t for t in legend)
    plt.close("all")


def test_run_comparison_draws_one_smoothed_line_per_run_and_key():
    from embiggen.notebook.plots import plot_run_comparison

    rows = {"a": [{"step": s, "x": float(s), "y": 1.0} for s in range(1, 7)],
            "b": [{"step": s, "x": 0.0, "y": 2.0} for s in range(1, 7)]}
    axes = plot_run_comparison(rows, ["x", "y"], window=2)
    assert len(axes) == 2 and [len(ax.get_lines()) for ax in axes] == [2, 2]
    # running means of two steps: (1), (1 + 2) / 2, (2 + 3) / 2, ...
    assert list(axes[0].get_lines()[0].get_ydata()) == pytest.approx([1.0, 1.5, 2.5, 3.5, 4.5, 5.5])
    plt.close("all")


def test_gold_against_kl_draws_each_relative_as_its_own_line_through_its_runs():
    from types import SimpleNamespace

    from embiggen.notebook.plots import plot_gold_vs_kl

    bon = [SimpleNamespace(n=n, kl=k, kl_bound=k + 0.1, gold=g, rm_score=g + 0.2)
           for n, k, g in ((1, 0.0, 0.1), (4, 0.6, 0.3))]
    relatives = {"simpo": [{"kl": 0.9, "gold": 0.4, "coefficient": 2.0}, {"kl": 0.3, "gold": 0.2, "coefficient": 1.0}],
                 "kto": [{"kl": 0.5, "gold": 0.35, "coefficient": 0.1}]}
    ax = plot_gold_vs_kl(bon, [{"kl": 1.2, "gold": 0.5, "label": "PPO"}], relatives=relatives)
    lines = {line.get_label(): line for line in ax.get_lines()}
    simpo = lines["SimPO, per beta (greedy answers)"]
    assert list(simpo.get_xdata()) == [0.3, 0.9] and list(simpo.get_ydata()) == [0.2, 0.4]  # in KL order
    assert list(lines["KTO, per beta (greedy answers)"].get_xdata()) == [0.5]
    assert "ORPO, per lambda (greedy answers)" not in lines
    assert {t.get_text() for t in ax.texts} >= {"beta=2", "beta=1", "beta=0.1"}
    plt.close(ax.figure)


def test_the_ensemble_runs_sit_on_the_sweeps_axes_with_the_interval_of_their_difference():
    from embiggen.notebook.plots import plot_ensemble_vs_kl

    sweep = [{"kl_coef": 0.3, "kl": 1.5, "gold": 0.7, "rm_score": 0.4},
             {"kl_coef": 0.0, "kl": 7.0, "gold": 0.0, "rm_score": 0.6}]
    runs = [{"reward": "one reward model", "mode": None, "kl_coef": 0.0, "kl": 7.0, "gold": 0.0, "rm_score_single": 0.6},
            {"reward": "ensemble of 3, worst", "mode": "worst", "kl_coef": 0.0, "kl": 3.0, "gold": 0.3,
             "rm_score_single": 0.5, "gold_difference": {"difference": 0.3, "low": 0.1, "high": 0.45}}]
    gold_ax, proxy_ax, diff_ax = plot_ensemble_vs_kl(sweep, runs)
    line = next(l for l in gold_ax.get_lines() if l.get_label().startswith("one reward model"))
    assert list(line.get_xdata()) == [1.5, 7.0] and list(line.get_ydata()) == [0.7, 0.0]  # in KL order
    star = next(l for l in gold_ax.get_lines() if l.get_label() == "PPO against ensemble of 3, worst")
    assert (list(star.get_xdata()), list(star.get_ydata())) == ([3.0], [0.3])
    assert any(list(l.get_ydata()) == [0.5] for l in proxy_ax.get_lines())  # the single model's score of its answers
    (bar,) = [c for c in diff_ax.collections if len(c.get_segments())]
    (segment,) = bar.get_segments()
    assert [round(x, 6) for x in segment[:, 0]] == [0.1, 0.45]  # the interval, not a symmetric guess
    assert [t.get_text() for t in diff_ax.get_yticklabels()] == ["3, worst"]
    plt.close(gold_ax.figure)
