"""Plots the notebooks show. Each takes data and a matplotlib Axes (or makes one)."""

from __future__ import annotations

import html
import math
import textwrap

import matplotlib.pyplot as plt
from IPython.display import clear_output
from matplotlib.colors import ListedColormap
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from embiggen.judging.overoptimisation import gao_curve

PALETTE = ["#fde2e4", "#e2ece9", "#dfe7fd", "#fff1c1", "#e8dff5", "#d7f9f1", "#fce1c8", "#e4f0d0"]


def _axes(ax, figsize=(6, 3.5)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def tokens_html(pieces: list[str]) -> str:
    """Each token on its own coloured chip, spaces shown as '␣' — tokenization made visible."""
    chips = "".join(
        f"<span style='background:{PALETTE[i % len(PALETTE)]};border:1px solid #bbb;border-radius:3px;"
        f"padding:1px 3px;margin:1px;font-family:monospace;display:inline-block'>"
        f"{html.escape(p.replace(' ', '␣').replace(chr(10), '⏎'))}</span>"
        for i, p in enumerate(pieces))
    return f"<div style='line-height:2'>{chips}</div><small>{len(pieces)} tokens</small>"


def _running_mean(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
            for i in range(len(values))]


#: Parts of a training loss that a stage logs per step (SFT with replay), and how to draw them.
LOSS_PARTS = {"response_loss": ("train: response tokens", "#08519c"),
              "replay_loss": ("train: replayed pretraining text", "#756bb1")}


def plot_loss_curves(log, ax=None, title="Pretraining loss", ylabel="cross-entropy (nats per token, log scale)",
                     chance: tuple[float, str] | None = None):
    """Training loss per step (faint) with its running mean, and validation loss (dots). A
    log whose loss has parts (`LOSS_PARTS` in `log.metrics`, e.g. SFT's response tokens and
    replayed text) gets one running mean per part instead of one for the mixed loss.
    chance: (loss, label) of a model that knows nothing, drawn as a dashed line (ln V for a
    uniform guess over V tokens, ln 2 for a reward model that scores both answers alike)."""
    ax = _axes(ax)
    window = max(1, len(log.train_loss) // 40)
    parts = [name for name in LOSS_PARTS if len(log.metrics.get(name, [])) == len(log.steps)]
    if parts:
        for name in parts:
            label, colour = LOSS_PARTS[name]
            ax.plot(log.steps, log.metrics[name], color=colour, lw=0.6, alpha=0.25)
            ax.plot(log.steps, _running_mean(log.metrics[name], window), color=colour, lw=1.5,
                    label=f"{label} (mean of {window} steps)")
    else:
        ax.plot(log.steps, log.train_loss, color="#9ecae1", lw=0.8, label="train (per step)")
        ax.plot(log.steps, _running_mean(log.train_loss, window), color="#08519c", lw=1.5,
                label=f"train (mean of {window} steps)")
    ax.plot(log.val_steps, log.val_loss, "o-", color="#e6550d", label="validation")
    if chance is not None:
        ax.axhline(chance[0], ls="--", color="#888", lw=1, label=chance[1])
    ax.set_yscale("log")  # the early plunge and the slow late gains both stay visible
    ax.set(xlabel="training step", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return ax


def plot_next_token_bars(dist: list[tuple[str, float]], ax=None, title="next-token probabilities"):
    ax = _axes(ax)
    labels = [t.replace(" ", "␣").replace("\n", "⏎") or "∅" for t, _ in dist]
    probs = [p for _, p in dist]
    ax.barh(range(len(dist))[::-1], probs, color="#3182bd")
    ax.set_yticks(range(len(dist))[::-1], labels, fontfamily="monospace")
    ax.set_xlim(0, 1)
    ax.set(xlabel="probability", title=title)
    for i, p in enumerate(probs):
        ax.text(p + 0.01, len(dist) - 1 - i, f"{p:.0%}", va="center", fontsize=8)
    return ax


def plot_size_sweep(rows: list[dict]):
    """Validation loss and fact recall against parameter count, one point per model size."""
    rows = sorted(rows, key=lambda r: r["params"])
    params = [r["params"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(params, [r["val_loss"] for r in rows], "o-", color="#08519c")
    right.plot(params, [r["fact_cloze_accuracy"] for r in rows], "o-", color="#31a354")
    for r in rows:
        left.annotate(f"{r['val_loss']:.3f}", (r["params"], r["val_loss"]), textcoords="offset points",
                      xytext=(0, 8), ha="center", fontsize=9)
        right.annotate(f"{r['fact_cloze_accuracy']:.0%}", (r["params"], r["fact_cloze_accuracy"]),
                       textcoords="offset points", xytext=(0, -14), ha="center", fontsize=9)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("parameters (log scale)")
        ax.margins(x=0.15, y=0.15)
    left.set(ylabel="validation loss (nats/token)", title="held-out loss falls with size")
    right.set(ylabel="facts recalled", ylim=(0, 1.1), title="fact cloze accuracy rises with size")
    fig.tight_layout()
    return fig


def _wrap(label: str, width: int = 14) -> str:
    """A tick label broken into lines (underscores read as spaces), so neighbours do not overlap."""
    return "\n".join(textwrap.wrap(label.replace("_", " "), width)) or label


def _chance_marks(ax, xs: list[float], half_width: float, chance) -> None:
    """A dashed chance line: across the plot for one number, or a short one over each group
    whose chance is known for a dict (label index -> chance)."""
    if chance is None:
        return
    if isinstance(chance, (int, float)):
        ax.axhline(chance, ls="--", color="#888", lw=1, label=f"chance ({chance:.0%})")
        return
    for k, (i, level) in enumerate(chance.items()):
        ax.plot([xs[i] - half_width, xs[i] + half_width], [level, level], ls="--", color="#888", lw=1.2,
                label="chance" if k == 0 else None)


def plot_grouped_rates(labels: list[str], series: dict[str, list[float]], ax=None, title="", ylabel="share",
                       counts: dict[str, list[int]] | None = None, chance=None):
    """Side-by-side bars: one group per label, one bar per series, each with its percentage.

    counts: series -> how many prompts each of its rates rests on; each bar then carries its
    Wilson 95% interval, and the group's label says n (when every series has the same n).
    chance: a rate a guess would get, for every group (a number) or for some (index -> rate)."""
    ax = _axes(ax, figsize=(max(6.0, 1.25 * len(labels) + 1.5), 3.8))
    width = 0.8 / len(series)
    colors = ["#3182bd", "#31a354", "#e6550d", "#756bb1"]
    for j, (name, values) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ns = counts.get(name) if counts else None
        drawn = [(i, x, v) for i, (x, v) in enumerate(zip(xs, values)) if v is not None]  # None: not measured
        ax.bar([x for _, x, _ in drawn], [v for _, _, v in drawn], width, label=name, color=colors[j % len(colors)])
        for i, x, v in drawn:
            top = v
            if ns is not None and ns[i]:
                low, high = wilson_interval(v * ns[i], ns[i])
                ax.plot([x, x], [low, high], color="#333", lw=0.9, label="95% interval" if (j, i) == (0, drawn[0][0]) else None)
                top = high
            ax.text(x, top + 0.02, f"{v:.0%}", ha="center", fontsize=7 if len(series) > 2 else 8)
    names = [_wrap(label) for label in labels]
    if counts:
        per_group = [{counts[name][i] for name, values in series.items()
                      if counts.get(name) is not None and values[i] is not None} for i in range(len(labels))]
        names = [f"{name}\n(n = {n.pop()})" if len(n) == 1 else name for name, n in zip(names, per_group)]
    ax.set_xticks(range(len(labels)), names, fontsize=8)
    _chance_marks(ax, list(range(len(labels))), 0.45, chance)
    ax.set_ylim(0, 1.35)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0], ["0%", "20%", "40%", "60%", "80%", "100%"])
    ax.set(title=title, ylabel=ylabel)
    ax.legend(ncol=len(series) + (counts is not None) + (chance is not None), loc="upper center", fontsize=8,
              frameon=False)
    return ax


def plot_rates(labels: list[str], values: list[float], ax=None, title="", ylabel="share", color="#31a354",
               counts: list[int] | None = None):
    """One bar per label with its percentage; with `counts`, each bar says how many items it
    rests on and carries its Wilson 95% interval."""
    ax = _axes(ax)
    ax.bar(range(len(labels)), values, color=color)
    for i, v in enumerate(values):
        top = v
        if counts:
            low, high = wilson_interval(v * counts[i], counts[i])
            ax.plot([i, i], [low, high], color="#333", lw=0.9, label="95% interval" if i == 0 else None)
            top = high
        ax.text(i, top + 0.02, f"{v:.0%}" + (f" of {counts[i]}" if counts else ""), ha="center", fontsize=8)
    ax.set_xticks(range(len(labels)), [_wrap(label) for label in labels])
    ax.set_ylim(0, 1.15)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0], ["0%", "20%", "40%", "60%", "80%", "100%"])
    ax.set(title=title, ylabel=ylabel)
    if counts:
        ax.legend(loc="lower right", fontsize=8)
    return ax


def loss_mask_html(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """Tokens of one training example: grey where the loss is masked (prompt), green where
    the model is trained to predict the token (response and its EOS)."""
    chips = []
    for token_id, label in zip(input_ids, labels):
        text = tokenizer.decode([token_id]).replace(" ", "␣").replace("\n", "⏎")
        style = ("background:#c7e9c0;border:1px solid #31a354" if label != -100
                 else "background:#eeeeee;border:1px solid #bbbbbb;color:#777")
        chips.append(f"<span style='{style};border-radius:3px;padding:1px 3px;margin:1px;font-family:monospace;"
                     f"display:inline-block'>{html.escape(text)}</span>")
    legend = ("<small><span style='background:#eeeeee;padding:0 4px'>grey</span> no loss (prompt) · "
              "<span style='background:#c7e9c0;padding:0 4px'>green</span> loss (response + EOS)</small>")
    return f"<div style='line-height:2'>{''.join(chips)}</div>{legend}"


def plot_cluster_accuracy(series: dict[str, dict[str, float]], heldout_cluster: str | None = None, ax=None,
                          title="Exact-match accuracy by task cluster", counts: dict[str, dict[str, int]] | None = None,
                          chance: dict[str, float] | None = None):
    """Grouped bars: one group per cluster, one bar per series (e.g. base / SFT held-in / SFT held-out).
    The held-out cluster is labelled as such. counts: series -> cluster -> prompts (Wilson
    intervals on the bars); chance: cluster -> the rate of a guess, where a guess can score."""
    clusters = list(dict.fromkeys(c for values in series.values() for c in values))
    ax = _axes(ax, figsize=(12, 4.2))
    labels = [f"{c} (held-out cluster)" if c == heldout_cluster else c for c in clusters]
    plot_grouped_rates(labels, {name: [values.get(c) for c in clusters] for name, values in series.items()},
                       ax=ax, title=title, ylabel="accuracy",
                       counts={name: [n.get(c, 0) for c in clusters] for name, n in counts.items()} if counts else None,
                       chance={clusters.index(c): v for c, v in chance.items() if c in clusters} if chance else None)
    return ax


def plot_confusion(matrix: list[list[int]], labels: list[str], ax=None, title="Counting: what the model answers",
                   xlabel="the model's answer", ylabel="true count"):
    """A confusion matrix as a heat map, counts written in the cells; the diagonal is right.
    The last column is 'other' (an answer that is none of the labels)."""
    ax = _axes(ax, figsize=(5, 4))
    columns = [*labels, "other"]
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=9,
                        color="white" if n > 0.6 * max(map(max, matrix)) else "black")
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#31a354", lw=2))
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return ax


def plot_ablation(rows: list[dict], chance: float | None = None, ax=None):
    """Held-out-cluster accuracy against the number of clusters trained on (FLAN, figure 6)."""
    ax = _axes(ax)
    xs = [r["clusters"] for r in rows]
    ys = [r["heldout_cluster_accuracy"] for r in rows]
    ax.plot(xs, ys, "o-", color="#08519c", label="held-out cluster")
    for i, r in enumerate(rows):
        if r.get("n"):  # the Wilson 95% interval of each point
            low, high = wilson_interval(r["heldout_cluster_accuracy"] * r["n"], r["n"])
            ax.plot([r["clusters"]] * 2, [low, high], color="#08519c", lw=0.9, alpha=0.6,
                    label=f"95% interval ({r['n']} prompts each)" if i == 0 else None)
    for x, y in zip(xs, ys):
        ax.annotate(f"{y:.0%}", (x, y), textcoords="offset points", xytext=(8, 0), va="center", fontsize=9)
    if chance is not None:
        ax.axhline(chance, ls="--", color="#999", label=f"chance ({chance:.0%})")
    ax.set_xticks(xs)
    ax.set(xlabel="number of task clusters in the instruction mixture (0 = base model)",
           ylabel="accuracy on the held-out cluster", ylim=(0, 1.05),
           title="Does instruction tuning on more clusters help an unseen one?")
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0], ["0%", "20%", "40%", "60%", "80%", "100%"])
    ax.legend(fontsize=8)
    return ax


# ---- notebook 3: RLHF ----------------------------------------------------------------------
def plot_rlhf_diagram(ax=None):
    """InstructGPT's three steps as boxes and arrows: which model feeds which."""
    ax = _axes(ax, figsize=(10, 4.2))
    w, h = 0.24, 0.22
    boxes = {  # name: (left, bottom, text, colour)
        "sft": (0.00, 0.66, "1  SFT model\n(notebook 2)", PALETTE[2]),
        "samples": (0.38, 0.66, "K answers per prompt,\nranked by the labeler", PALETTE[3]),
        "rm": (0.76, 0.66, "2  reward model\n(Bradley-Terry on pairs)", PALETTE[0]),
        "ref": (0.00, 0.14, "frozen reference\n(a copy of SFT)", PALETTE[4]),
        "policy": (0.38, 0.14, "3  PPO policy\n(+ value head)", PALETTE[1]),
        "reward": (0.76, 0.14, "reward = r(x, y)\n- beta * KL(policy || ref)", PALETTE[6]),
    }
    for x, y, text, colour in boxes.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.015", fc=colour, ec="#555"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)

    def edge(name, side, shift=0.0):
        x, y = boxes[name][:2]
        return {"right": (x + w + 0.01, y + h / 2 + shift), "left": (x - 0.01, y + h / 2 + shift),
                "top": (x + w / 2 + shift, y + h + 0.01), "bottom": (x + w / 2 + shift, y - 0.01)}[side]

    def arrow(start, end, label="", rad=0.0, dy=0.03, colour="#333"):
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color=colour,
                                     connectionstyle=f"arc3,rad={rad}"))
        if label:
            ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + dy, label, ha="center", fontsize=8,
                    color=colour)

    arrow(edge("sft", "right"), edge("samples", "left"), "sample")
    arrow(edge("samples", "right"), edge("rm", "left"), "pairs")
    arrow(edge("sft", "bottom"), edge("ref", "top"), "", dy=0)
    ax.text(0.13, 0.53, "copy", fontsize=8, color="#333")
    arrow(edge("sft", "bottom", 0.06), edge("policy", "top", -0.06), "")
    ax.text(0.27, 0.53, "initialise", fontsize=8, color="#333")
    arrow(edge("rm", "bottom"), edge("reward", "top"), "")
    ax.text(0.89, 0.53, "score", fontsize=8, color="#333")
    arrow(edge("policy", "right", 0.05), edge("reward", "left", 0.05), "sample y", dy=0.02)
    arrow(edge("reward", "left", -0.05), edge("policy", "right", -0.05), "PPO update", dy=-0.06, colour="#1a7f37")
    arrow(edge("ref", "bottom"), edge("reward", "bottom"), "log-probs of y under the reference", rad=0.18, dy=-0.2)
    ax.text(0.50, 0.94, "the simulated labeler (gold score: Helpful, Honest, Harmless)", ha="center", fontsize=8,
            color="#555")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.12, 1.0))
    ax.axis("off")
    return ax


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a rate of `successes` out of `n` (95% by default); honest
    for the small counts and the rates near 0% or 100% that a plain +-2 standard errors is not."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def plot_pair_accuracy(per_type: dict[str, float], counts: dict[str, int] | None = None, ax=None,
                       title="Reward model: held-out pairwise accuracy by pair type"):
    """One horizontal bar per pair type and the 50% chance line; with `counts`, each bar says
    how many pairs it rests on ("41% of 17") and carries its Wilson 95% interval."""
    ax = _axes(ax, figsize=(7, 0.45 * len(per_type) + 1.2))
    labels = list(per_type)
    ax.barh(range(len(labels)), [per_type[k] for k in labels], color="#6baed6")
    for i, k in enumerate(labels):
        text = f"{per_type[k]:.0%}"
        if counts:
            n = counts[k]
            low, high = wilson_interval(per_type[k] * n, n)
            ax.plot([low, high], [i, i], color="#08306b", lw=1.2, label="95% interval" if i == 0 else None)
            text, x = f"{per_type[k]:.0%} of {n}", high
        else:
            x = per_type[k]
        ax.text(x + 0.01, i, text, va="center", fontsize=8)
    ax.axvline(0.5, ls="--", color="#888", lw=1, label="chance")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.18), xlabel="accuracy: the preferred answer scored higher", title=title)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # clear of every bar
    return ax


def plot_ppo_curves(rows: list[dict], axes=None, title_suffix="", refresh_at=()):
    """Reward-model score, gold score and KL per PPO step, side by side; a dashed line where
    a new reward model took over (iterated RLHF)."""
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    steps = [r["step"] for r in rows]
    panels = [("rm_score", "reward-model score (proxy)", "#3182bd"), ("gold_score", "gold score (labeler)", "#31a354"),
              ("kl", "KL(policy || SFT), nats", "#e6550d")]
    for ax, (key, label, colour) in zip(axes, panels):
        ax.plot(steps, [r[key] for r in rows], color=colour, lw=1.5)
        for i, step in enumerate(refresh_at):
            ax.axvline(step + 0.5, ls="--", color="#888", lw=1, label="new reward model" if i == 0 else None)
        ax.set(xlabel="PPO step", title=label + title_suffix)
        ax.grid(alpha=0.3)
    if refresh_at:
        axes[1].legend(fontsize=8, loc="lower right")
    return axes


class LivePlot:
    """A callback for a training run (`train_or_load_*(callback=...)`): redraws its curves, `draw(rows)`, every
    few steps, and `final(rows)` draws the finished ones (also when the run came from the cache and nothing was
    drawn live)."""
    draw = None  # a plot function of the rows, set by each kind of run

    def __init__(self, every: int = 5):
        self.every, self.rows = every, []

    def __call__(self, step: int, row: dict) -> None:
        self.rows.append(row)
        if step % self.every == 0:
            clear_output(wait=True)
            type(self).draw(self.rows)
            plt.show()

    def final(self, rows: list[dict], **kwargs) -> None:
        if self.rows:
            clear_output(wait=True)
        type(self).draw(rows, **kwargs)
        plt.show()


class LivePPOPlot(LivePlot):
    """PPO's three curves, live (`final(rows, refresh_at=...)` marks the new reward models)."""
    draw = plot_ppo_curves


def plot_gold_vs_kl(best_of_n: list, ppo_points: list[dict], ax=None,
                    title="Gold score against KL from the SFT model", dpo_points: list[dict] | None = None,
                    relatives: dict[str, list[dict]] | None = None):
    """Gao, Schulman & Hilton's picture: best-of-n and PPO runs on one set of axes.

    best_of_n: `embiggen.methods.best_of_n.BestOfN` results — drawn at their KL estimated from the
    samples, with the log n - (n - 1)/n bound as a faint line to its right. ppo_points: dicts
    with 'kl', 'gold', a 'label' and, optionally, 'gold_sampled' (the gold score of the very
    samples its KL was measured on, drawn as a hollow marker: like with like). dpo_points: the
    same for DPO runs ('kl', 'gold', optionally 'gold_sampled', 'beta'), joined by a line.
    relatives: DPO's relatives' runs by method ('simpo', 'orpo', 'kto'; points as DPO's, with
    their 'coefficient'), greedy answers only, one line each."""
    ax = _axes(ax, figsize=(7, 4.2))
    kls, golds = [b.kl for b in best_of_n], [b.gold for b in best_of_n]
    ax.plot(kls, golds, "o-", color="#756bb1", label="best-of-n (gold, KL estimated from samples)")
    ax.plot([b.kl_bound for b in best_of_n], golds, ":", color="#756bb1", alpha=0.5,
            label="best-of-n at the bound log n - (n-1)/n")
    for b in best_of_n:
        ax.annotate(f"n={b.n}", (b.kl, b.gold), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.plot(kls, [b.rm_score for b in best_of_n], "o--", color="#bcbddc", label="best-of-n (reward model)")
    for i, p in enumerate(ppo_points):
        colour = plt.cm.tab10(i % 10)
        ax.plot(p["kl"], p["gold"], "s", ms=8, color=colour, label=p["label"])
        if p.get("gold_sampled") is not None:
            ax.plot(p["kl"], p["gold_sampled"], "s", ms=8, mfc="none", color=colour)
            ax.plot([p["kl"], p["kl"]], [p["gold_sampled"], p["gold"]], color=colour, lw=0.8, alpha=0.6)
    if dpo_points:
        dpo_points = sorted(dpo_points, key=lambda p: p["kl"])
        ax.plot([p["kl"] for p in dpo_points], [p["gold"] for p in dpo_points], "D-", color="#e6550d",
                label="DPO, one point per beta (greedy answers)")
        if all(p.get("gold_sampled") is not None for p in dpo_points):
            ax.plot([p["kl"] for p in dpo_points], [p["gold_sampled"] for p in dpo_points], "D:", mfc="none",
                    color="#e6550d", label="DPO, sampled answers (T = 1)")
        for p in dpo_points:
            ax.annotate(f"beta={p['beta']:g}", (p["kl"], p["gold"]), textcoords="offset points", xytext=(4, 6),
                        fontsize=8, color="#e6550d")
    styles = {"simpo": ("^-", "#31a354", "SimPO, per beta", "beta"), "orpo": ("v-", "#3182bd", "ORPO, per lambda", "lambda"),
              "kto": ("P-", "#d6616b", "KTO, per beta", "beta")}
    for method, points in (relatives or {}).items():
        marker, colour, label, knob = styles[method]
        points = sorted(points, key=lambda p: p["kl"])
        ax.plot([p["kl"] for p in points], [p["gold"] for p in points], marker, color=colour,
                label=f"{label} (greedy answers)")
        for p in points:
            ax.annotate(f"{knob}={p['coefficient']:g}", (p["kl"], p["gold"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color=colour)
    if any(p.get("gold_sampled") is not None for p in ppo_points):
        ax.plot([], [], "s", mfc="none", color="grey", label="PPO, sampled answers (T = 1)")
    ax.set(xlabel="KL from the SFT model (nats)", ylabel="mean score of the answers", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return ax


def plot_gold_vs_sqrt_kl(best_of_n: list, rl_points: list[dict], fits: dict, start_gold: float, ax=None,
                         title="Gold gained against sqrt(KL), with Gao et al.'s fitted forms"):
    """Gao, Schulman & Hilton's axes: the gold score gained over the starting policy (its own
    samples: best-of-1) against d = sqrt(KL). best_of_n: `BestOfN` results; rl_points: dicts with
    'kl' and 'gold_sampled' (the gold of the very samples the KL was measured on) and a 'label';
    fits: `embiggen.judging.overoptimisation.gao_fit` results by name ("best_of_n", "rl"), drawn as curves with
    their coefficients in the legend."""
    ax = _axes(ax, figsize=(7, 4.2))
    ax.plot([math.sqrt(b.kl) for b in best_of_n], [b.gold - start_gold for b in best_of_n], "o", color="#756bb1",
            label="best-of-n")
    for b in best_of_n:
        ax.annotate(f"n={b.n}", (math.sqrt(b.kl), b.gold - start_gold), textcoords="offset points", xytext=(4, -10),
                    fontsize=8)
    ax.plot([math.sqrt(p["kl"]) for p in rl_points], [p["gold_sampled"] - start_gold for p in rl_points], "s",
            color="#31a354", label="PPO runs (sampled answers)")
    for p in rl_points:
        ax.annotate(p["label"], (math.sqrt(p["kl"]), p["gold_sampled"] - start_gold), textcoords="offset points",
                    xytext=(4, 4), fontsize=7, color="#31a354")
    top = max([b.kl for b in best_of_n] + [p["kl"] for p in rl_points]) * 1.15
    grid = [top * (i / 100) ** 2 for i in range(101)]
    styles = {"best_of_n": ("#756bb1", "d (alpha - beta d)"), "rl": ("#31a354", "d (alpha - beta log d)")}
    for name, fit in fits.items():
        colour, formula = styles[fit["form"]]
        ax.plot([math.sqrt(k) for k in grid], gao_curve(fit, grid), "-", color=colour, alpha=0.6,
                label=f"{name.replace('_', '-')} fit {formula}: alpha={fit['alpha']:.3g}, beta={fit['beta']:.3g}")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set(xlabel="d = sqrt(KL from the SFT model), sqrt(nats)", ylabel="gold gained over SFT's samples", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return ax


def plot_run_comparison(runs: dict[str, list[dict]], keys: list[str], axes=None, title: str = "", window: int = 5):
    """Training logs side by side: one panel per key of the logged rows (running means of `window`
    steps), one line per run (runs: name -> rows with "step" and the keys)."""
    if axes is None:
        _, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2))
    axes = [axes] if len(keys) == 1 else list(axes)
    for ax, key in zip(axes, keys):
        for i, (name, rows) in enumerate(runs.items()):
            values = [r[key] for r in rows]
            smooth = [sum(values[max(0, j - window + 1): j + 1]) / len(values[max(0, j - window + 1): j + 1])
                      for j in range(len(values))]
            ax.plot([r["step"] for r in rows], smooth, color=plt.cm.tab10(i % 10), label=name)
        ax.set(xlabel="PPO step", title=key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        axes[0].figure.suptitle(title, fontsize=10)
    axes[0].figure.tight_layout()
    return axes


def plot_person_probe(rates: dict[str, dict[str, dict[str, float]]], outcomes: tuple[str, ...], axes=None,
                      title="Does the model know whom it knows?", counts: dict[str, int] | None = None):
    """Stacked bars, one per group of people, one panel per model: the share of answers with
    each outcome. rates: model -> group -> outcome -> share; counts: group -> questions asked."""
    models = list(rates)
    if counts:
        rates = {m: {f"{g.replace('_', ' ')} (n = {counts[g]})": v for g, v in r.items()} for m, r in rates.items()}
    if axes is None:
        _, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.2), sharey=True)
    axes = [axes] if len(models) == 1 else list(axes)
    colours = {"right fact": "#31a354", "some fact": "#de2d26", "I do not know them": "#3182bd",
               "I do not know who": "#9ecae1", "someone else's name": "#fdae6b", "other": "#bdbdbd"}
    for ax, model in zip(axes, models):
        groups = list(rates[model])
        left = [0.0] * len(groups)
        for outcome in outcomes:
            widths = [rates[model][g][outcome] for g in groups]
            ax.barh(groups, widths, left=left, color=colours.get(outcome, "#999"), label=outcome)
            left = [a + b for a, b in zip(left, widths)]
        ax.set(xlim=(0, 1), title=f"{model}", xlabel="share of answers")
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
        ax.invert_yaxis()
    axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes[0].figure.suptitle(title, y=1.02)
    return axes


def plot_kl_sweep(runs: list[dict], highlight: int | None = None, axes=None):
    """Reward hacking: for each KL coefficient, the proxy (reward-model) score, the gold score
    and the KL from the SFT model over PPO training (running means of 5 steps).
    runs: dicts with 'kl_coef' and 'rows' (the PPO log)."""
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharex=True)
    colours = plt.cm.viridis([i / max(1, len(runs) - 1) for i in range(len(runs))])
    panels = [("rm_score", "proxy: reward-model score"), ("gold_score", "true: gold score"),
              ("kl", "KL(policy || SFT), nats")]
    for i, (run, colour) in enumerate(zip(runs, colours)):
        steps = [r["step"] for r in run["rows"]]
        lw, alpha = (2.5, 1.0) if highlight in (None, i) else (1.0, 0.3)
        for ax, (key, _) in zip(axes, panels):
            ax.plot(steps, _smooth([r[key] for r in run["rows"]]), color=colour, lw=lw, alpha=alpha,
                    label=f"beta = {run['kl_coef']:g}")
    for ax, (_, title) in zip(axes, panels):
        ax.set(xlabel="PPO step", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return axes


def plot_ensemble_vs_kl(sweep: list[dict], runs: list[dict], axes=None):
    """Notebook 3's KL sweep with the ensemble runs on its axes: held-out gold score (left) and the
    single reward model's score of the same answers (middle, one proxy for every run) against the
    held-out KL, the sweep's runs joined by a line; and (right) each ensemble run's gold score
    minus the single reward model's run at the same beta, with its 95% bootstrap interval.
    sweep: `experiments.kl_sweep`'s runs; runs: `experiments.ensemble_comparison`'s."""
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(14, 3.8), gridspec_kw={"width_ratios": [1, 1, 0.8]})
    gold_ax, proxy_ax, diff_ax = axes
    sweep = sorted(sweep, key=lambda r: r["kl"])
    for ax, key, title in ((gold_ax, "gold", "true: gold score"),
                           (proxy_ax, "rm_score", "proxy: the single reward model's score")):
        ax.plot([r["kl"] for r in sweep], [r[key] for r in sweep], "o-", color="#756bb1",
                label="one reward model, per beta (the sweep)")
        for r in sweep:
            ax.annotate(f"beta={r['kl_coef']:g}", (r["kl"], r[key]), textcoords="offset points", xytext=(4, 5),
                        fontsize=7, color="#756bb1")
        ax.set(xlabel="KL from the SFT model (nats), held out", ylabel="mean over held-out prompts", title=title)
        ax.grid(alpha=0.3)
    ensembles = [r for r in runs if r.get("mode")]
    for i, run in enumerate(ensembles):
        colour = plt.cm.Set1(i % 9)
        gold_ax.plot(run["kl"], run["gold"], "*", ms=13, color=colour, label=f"PPO against {run['reward']}")
        proxy_ax.plot(run["kl"], run["rm_score_single"], "*", ms=13, color=colour)
        d = run["gold_difference"]
        diff_ax.errorbar(d["difference"], i, xerr=[[d["difference"] - d["low"]], [d["high"] - d["difference"]]],
                         fmt="*", ms=11, color=colour, capsize=4)
    diff_ax.axvline(0, color="#888", ls="--", lw=1)
    diff_ax.set_yticks(range(len(ensembles)), [r["reward"].replace("ensemble of ", "") for r in ensembles])
    diff_ax.set_ylim(-0.7, len(ensembles) - 0.3)
    beta = runs[0]["kl_coef"] if runs else float("nan")
    diff_ax.set(xlabel="gold, ensemble run minus one-model run", title=f"at beta = {beta:g}, 95% interval")
    diff_ax.grid(alpha=0.3, axis="x")
    gold_ax.legend(fontsize=7, loc="best")
    return axes


def _smooth(values: list[float], window: int = 5) -> list[float]:
    return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
            for i in range(len(values))]


# ---- notebook 4: DPO -------------------------------------------------------------------------
def plot_dpo_curves(log, axes=None, title_suffix=""):
    """What DPO users watch, per step (running means of 10): the policy's log-probabilities of
    the chosen and the rejected answers (both falling is DPO's known failure mode), and the
    implicit-reward margin with the share of pairs it ranks right (held-out points as dots)."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    left, right = axes
    steps, m = log.steps, log.metrics
    left.plot(steps, _smooth(m["logp_chosen"], 10), color="#31a354", label="chosen answers")
    left.plot(steps, _smooth(m["logp_rejected"], 10), color="#de2d26", label="rejected answers")
    left.set(xlabel="DPO step", ylabel="log pi(y | x), summed over the answer",
             title="the policy's log-probability of each answer" + title_suffix)
    left.legend(fontsize=8)
    right.plot(steps, _smooth(m["reward_accuracy"], 10), color="#3182bd", label="pairs ranked right (training batch)")
    if m.get("val_reward_accuracy"):
        right.plot(log.val_steps, m["val_reward_accuracy"], "o", color="#08519c", label="pairs ranked right (held out)")
    right.axhline(0.5, ls="--", color="#888", lw=1, label="chance")
    twin = right.twinx()
    twin.plot(steps, _smooth(m["reward_margin"], 10), color="#e6550d", label="implicit-reward margin")
    twin.set_ylabel("beta (margin of log-ratios)", color="#e6550d")
    right.set(xlabel="DPO step", ylabel="share of pairs", ylim=(0, 1.05), title="the implicit reward" + title_suffix)
    right.set_yticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
    lines = right.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    right.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="lower right")
    return axes


# ---------------------------------------------------------------------------------------
# Notebook 5: RL with verifiable rewards
# ---------------------------------------------------------------------------------------
def guessing_pass_at_k(n_choices: int, ks) -> dict[int, float]:
    """pass@k of a guesser drawing uniformly among `n_choices` answers, one of them right: 1 - (1 - 1/n)^k."""
    return {k: 1 - (1 - 1 / n_choices) ** k for k in ks}


def plot_pass_at_k(curves: dict[str, dict[int, float]], ax=None, title="pass@k", guess: dict[int, float] | None = None,
                   guess_label: str = "guessing"):
    """pass@k against k (log scale), one line per model or cluster; `guess`: a guesser's pass@k, dashed."""
    ax = _axes(ax, figsize=(5.5, 3.6))
    for i, (label, curve) in enumerate(curves.items()):
        ks = sorted(curve)
        ax.plot(ks, [curve[k] for k in ks], "o-", color=plt.cm.tab10(i % 10), label=label)
    if guess:
        ks = sorted(guess)
        ax.plot(ks, [guess[k] for k in ks], "--", color="#888", label=guess_label)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="k (answers sampled per prompt, T = 1)", ylabel="pass@k", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return ax


#: What GRPO's training log shows, panel by panel: (row key, title, colour)
GRPO_PANELS = [("reward", "reward of the sampled answers", "#3182bd"),
               ("eval_accuracy", "held-out accuracy (greedy)", "#31a354"),
               ("zero_signal", "groups with no signal (all answers alike)", "#756bb1"),
               ("entropy", "entropy per token (nats)", "#636363"),
               ("response_length", "answer length (tokens)", "#e6550d"),
               ("kl", "KL(policy || SFT), nats", "#de2d26")]


def plot_grpo_curves(rows: list[dict], axes=None, title_suffix="", label=None, colour=None):
    """GRPO's training curves, six panels: the batch's reward (faint per step, and its running
    mean), the held-out accuracy of the live curve (dots where it was measured), the share of
    zero-signal groups, the entropy, the answer length and the KL from the SFT model."""
    if axes is None:
        _, axes = plt.subplots(2, 3, figsize=(12, 5.6))
    axes = list(getattr(axes, "flat", axes))
    for ax, (key, title, default_colour) in zip(axes, GRPO_PANELS):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None and not _isnan(r[key])]
        if not points:
            ax.set(title=title + title_suffix)
            continue
        steps, values = zip(*points)
        c = colour or default_colour
        if key == "eval_accuracy":
            ax.plot(steps, values, "o-", color=c, lw=1.5, label=label)
        else:
            window = max(1, len(values) // 20)
            if colour is None:
                ax.plot(steps, values, color=c, lw=0.6, alpha=0.3)
            ax.plot(steps, _running_mean(list(values), window), color=c, lw=1.5, label=label)
        ax.set(xlabel="GRPO step", title=title + title_suffix)
        ax.grid(alpha=0.3)
    if label:
        axes[1].legend(fontsize=8)
    plt.tight_layout()
    return axes


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


class LiveGRPOPlot(LivePlot):
    """GRPO's six curves, live."""
    draw = plot_grpo_curves

    def __init__(self, every: int = 10):
        super().__init__(every)


def plot_accuracy_vs_samples(runs: dict[str, list[tuple[int, float]]], ax=None, baseline: float | None = None,
                             title="Held-out accuracy against answers sampled"):
    """(answers sampled, accuracy) per method, on a log x-axis; `baseline`: the SFT model's greedy accuracy."""
    ax = _axes(ax, figsize=(7, 4))
    styles = {"majority_vote": ("s--", "majority vote of the SFT model's samples (at inference)")}
    for i, (name, points) in enumerate(runs.items()):
        points = [(x, y) for x, y in points if x > 0]
        if not points:
            continue
        marker, label = styles.get(name, ("o-", f"{name.replace('_', ' ')} (answers sampled in training)"))
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker, color=plt.cm.tab10(i % 10), label=label)
    if baseline is not None:
        ax.axhline(baseline, ls=":", color="#888", label="SFT model, greedy (no answers sampled)")
    ax.set_xscale("log")
    ax.set(xlabel="answers sampled", ylabel="accuracy on the held-out prompts", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return ax


def token_push_html(tokens: list[str], deltas: list[float], scale: float | None = None) -> str:
    """An answer's tokens, each coloured by how much one update changed its log-probability:
    green pushed up, red pushed down, the stronger the more; the change on hover."""
    scale = scale or max([abs(d) for d in deltas] + [1e-9])
    chips = []
    for token, d in zip(tokens, deltas):
        alpha = min(1.0, abs(d) / scale)
        colour = f"rgba(49,163,84,{alpha:.2f})" if d >= 0 else f"rgba(222,45,38,{alpha:.2f})"
        chips.append(f"<span title='{d:+.3f} nats' style='background:{colour};border:1px solid #ccc;"
                     f"border-radius:3px;padding:0 2px;margin:1px;font-family:monospace'>"
                     f"{html.escape(token.replace(' ', '␣')) or '∅'}</span>")
    return "".join(chips)


def token_span(tokens: list[str], text: str) -> list[int]:
    """Positions of the byte-level tokens (GPT-2 style, "Ġ" for a space) that spell the first
    occurrence of `text` in the sequence they make up."""
    pieces = [t.replace("Ġ", " ").replace("Ċ", "\n") for t in tokens]
    joined = "".join(pieces)
    start = joined.find(text)
    if start < 0:
        raise ValueError(f"{text!r} is not in the tokens' text {joined!r}")
    positions, offset = [], 0
    for i, piece in enumerate(pieces):
        if offset < start + len(text) and offset + len(piece) > start and piece.strip():
            positions.append(i)
        offset += len(piece)
    return positions


def plot_attention(tokens: list[str], weights, query: int = -1, marked: list[int] | None = None, ax=None,
                   title: str | None = None):
    """What every head reads from each earlier token at position `query`: one row per head
    (layer L, head H), one column per token, darker = more attention. `weights` is
    `embiggen.lm.model.attention_weights`'s (layers, heads, query, key) tensor; `marked`
    token positions get a box on the axis (e.g. the earlier mention of a name)."""
    layers, heads = weights.shape[:2]
    rows = weights[:, :, query, :].reshape(layers * heads, -1).detach().cpu().numpy()
    ax = _axes(ax, figsize=(min(14, 1.0 + 0.42 * len(tokens)), 0.8 + 0.28 * layers * heads))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    labels = [t.replace("Ġ", "␣").replace("Ċ", "⏎") for t in tokens]
    ax.set_xticks(range(len(tokens)), labels, rotation=60, ha="right", fontsize=8, family="monospace")
    ax.set_yticks(range(layers * heads), [f"layer {layer} head {head}" for layer in range(layers)
                                          for head in range(heads)], fontsize=7)
    for i in marked or []:
        ax.get_xticklabels()[i].set_bbox(dict(facecolor="#fff1c1", edgecolor="#e6550d", pad=1.5))
    position = query % len(tokens)
    ax.set_title(title or f"attention from {labels[position]!r} (position {position}), predicting the next token",
                 fontsize=9)
    plt.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="attention weight")
    return ax


#: the labeler's categories in the order the plots stack them, best first, and their colours
CATEGORY_COLOURS = {"correct": "#31a354", "hedged": "#3182bd", "refused": "#3182bd", "unnamed": "#9ecae1",
                    "wrong": "#fdae6b", "misnamed": "#9e9ac8", "declined": "#bdbdbd", "off-topic": "#969696", "unfinished": "#636363",
                    "fabricated": "#de2d26", "complied": "#de2d26"}


def plot_scores_by_category(rows: list[dict], score_key: str = "rm_score", ax=None, bins: int = 30,
                            title="What the reward model pays for each kind of answer"):
    """Histograms of one score over responses, one colour per labeler category (`rows` carry
    "category" and `score_key`, as `embiggen.judging.evaluate.judge_model`'s do)."""
    ax = _axes(ax, figsize=(7, 3.5))
    scores = [r[score_key] for r in rows]
    low, high = min(scores), max(scores)
    edges = [low + (high - low) * i / bins for i in range(bins + 1)] if high > low else bins
    for category, colour in CATEGORY_COLOURS.items():
        values = [r[score_key] for r in rows if r["category"] == category]
        if values:
            ax.hist(values, bins=edges, alpha=0.55, color=colour, label=f"{category} ({len(values)})",
                    histtype="stepfilled", edgecolor=colour)
    ax.set(title=title, xlabel=f"{score_key} (normalised reward)", ylabel="responses")
    ax.legend(fontsize=7, ncol=2)
    return ax


def plot_category_mix(rows: list[dict], kinds: tuple[str, ...] = ("task", "unknown_person", "medical", "harmful"),
                      axes=None, window: int = 5):
    """For each kind of prompt, the share of each labeler category among PPO's sampled answers,
    step by step (`rows` are PPO log rows with "categories"; a running mean over `window` steps,
    since each step samples only a few prompts of each kind)."""
    if axes is None:
        _, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3), sharey=True)
    rows = [r for r in rows if r.get("categories")]
    steps = [r["step"] for r in rows]
    for ax, kind in zip(axes, kinds):
        totals = [sum(r["categories"].get(kind, {}).values()) for r in rows]
        present = [c for c in CATEGORY_COLOURS if any(r["categories"].get(kind, {}).get(c) for r in rows)]
        shares = []
        for category in present:
            counts = [r["categories"].get(kind, {}).get(category, 0) for r in rows]
            shares.append([sum(counts[max(0, i - window + 1): i + 1]) / max(1, sum(totals[max(0, i - window + 1): i + 1]))
                           for i in range(len(rows))])
        if present:
            ax.stackplot(steps, shares, labels=present, colors=[CATEGORY_COLOURS[c] for c in present], alpha=0.85)
        ax.set(title=kind.replace("_", " "), xlabel="PPO step", ylim=(0, 1))
        ax.legend(fontsize=6, loc="lower left")
    axes[0].set_ylabel("share of sampled answers")
    return axes


def plot_dpo_loss_vs_margin(betas=(0.1, 0.5, 2.0), margin_range: float = 10.0, ax=None):
    """DPO's loss for one pair, -log sigma(beta * m), against the implicit reward margin
    m = (log pi/pi_ref)(chosen) - (log pi/pi_ref)(rejected), for a few betas: it falls
    towards 0 once the chosen answer is ahead, and its slope (the gradient's weight,
    beta * sigma(-beta * m)) fades there, so pairs already ranked right stop pulling."""
    ax = _axes(ax, figsize=(6, 3.5))
    ms = [-margin_range + 2 * margin_range * i / 200 for i in range(201)]
    for beta in betas:
        ax.plot(ms, [math.log1p(math.exp(-beta * m)) for m in ms], label=f"β = {beta}")
    ax.axvline(0, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="margin m: how far the policy has moved chosen over rejected (nats)",
           ylabel="loss −log σ(β·m)", title="The DPO loss of one pair")
    ax.legend(fontsize=8)
    return ax


def plot_speed_vs_length(rows: list[dict], ax=None, title="Generation time against answer length"):
    """Seconds to write an answer against its length in new tokens, one line per model/path
    (`rows`: {"name", "tokens", "seconds"}), and the tokens per second each reaches."""
    ax = _axes(ax, figsize=(6, 3.5))
    for name in dict.fromkeys(r["name"] for r in rows):
        mine = sorted((r["tokens"], r["seconds"]) for r in rows if r["name"] == name)
        rate = mine[-1][0] / mine[-1][1] if mine[-1][1] else float("nan")
        ax.plot([t for t, _ in mine], [s for _, s in mine], "o-", label=f"{name} ({rate:.0f} tokens/s at the longest)")
    ax.set(xlabel="new tokens generated", ylabel="seconds", title=title)
    ax.legend(fontsize=8)
    return ax


def plot_agent_knowledge(knowledge: list[dict[str, list[str]]], facts, axes=None):
    """Generative agents' information diffusion (`embiggen.methods.agents.talk`'s "knowledge"):
    left, how many (agent, fact) pairs are known right and known garbled after each round;
    right, after the last round, which agent holds which fact (green: right, orange: garbled)."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(12, 3.4), gridspec_kw={"width_ratios": [1, 1.6]})
    rounds = list(range(len(knowledge)))
    for state, colour, label in (("knows", "#31a354", "states the fact right"), ("garbled", "#fd8d3c", "garbled")):
        axes[0].plot(rounds, [sum(s == state for v in k.values() for s in v) for k in knowledge], "o-", color=colour,
                     label=label)
    total = sum(len(v) for v in knowledge[0].values())
    axes[0].set(xlabel="round of conversation (0: before any)", ylabel=f"(agent, fact) pairs, of {total}",
                title="What the agents know", xticks=rounds)
    axes[0].legend(fontsize=8)
    last = knowledge[-1]
    grid = [[{"knows": 1.0, "garbled": 0.5}.get(s, 0.0) for s in v] for v in last.values()]
    axes[1].imshow(grid, cmap=ListedColormap(["#f0f0f0", "#fd8d3c", "#31a354"]), vmin=0, vmax=1, aspect="auto")
    axes[1].set_yticks(range(len(last)), list(last), fontsize=8)
    axes[1].set_xticks(range(len(facts)), [f.sentence.rstrip(".") for f in facts], rotation=35, ha="right", fontsize=7)
    axes[1].set_title("After the last round: grey unheard, orange garbled, green right", fontsize=9)
    return axes
