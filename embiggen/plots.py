"""Plots the notebooks show. Each takes data and a matplotlib Axes (or makes one)."""

from __future__ import annotations

import html

import matplotlib.pyplot as plt

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


def plot_loss_curves(log, ax=None, title="Pretraining loss"):
    """Training loss per step (faint) with its running mean, and validation loss (dots)."""
    ax = _axes(ax)
    ax.plot(log.steps, log.train_loss, color="#9ecae1", lw=0.8, label="train (per step)")
    window = max(1, len(log.train_loss) // 40)
    smooth = [sum(log.train_loss[max(0, i - window + 1): i + 1]) / len(log.train_loss[max(0, i - window + 1): i + 1])
              for i in range(len(log.train_loss))]
    ax.plot(log.steps, smooth, color="#08519c", lw=1.5, label=f"train (mean of {window})")
    ax.plot(log.val_steps, log.val_loss, "o-", color="#e6550d", label="validation")
    ax.set_yscale("log")  # the early plunge and the slow late gains both stay visible
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token, log scale)", title=title)
    ax.legend()
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


def plot_grouped_rates(labels: list[str], series: dict[str, list[float]], ax=None, title="", ylabel="share"):
    """Side-by-side bars: one group per label, one bar per series."""
    ax = _axes(ax)
    width = 0.8 / len(series)
    colors = ["#3182bd", "#31a354", "#e6550d", "#756bb1"]
    for j, (name, values) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(labels))]
        drawn = [(x, v) for x, v in zip(xs, values) if v is not None]  # None: no such measurement
        ax.bar([x for x, _ in drawn], [v for _, v in drawn], width, label=name, color=colors[j % len(colors)])
        for x, v in drawn:
            ax.text(x, v + 0.02, f"{v:.0%}", ha="center", fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1.3)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set(title=title, ylabel=ylabel)
    ax.legend(ncol=len(series), loc="upper center", fontsize=8, frameon=False)
    return ax


def plot_rates(labels: list[str], values: list[float], ax=None, title="", ylabel="share", color="#31a354"):
    ax = _axes(ax)
    ax.bar(labels, values, color=color)
    ax.set_ylim(0, 1.05)
    for i, v in enumerate(values):
        ax.text(i, v + 0.02, f"{v:.0%}", ha="center", fontsize=9)
    ax.set(title=title, ylabel=ylabel)
    ax.tick_params(axis="x", rotation=30)
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
                          title="Exact-match accuracy by task cluster"):
    """Grouped bars: one group per cluster, one bar per series (e.g. base / SFT held-in / SFT held-out).
    The held-out cluster is labelled as such."""
    ax = _axes(ax, figsize=(11, 3.8))
    clusters = list(dict.fromkeys(c for values in series.values() for c in values))
    labels = [f"{c}\n(held-out cluster)" if c == heldout_cluster else c for c in clusters]
    plot_grouped_rates(labels, {name: [values.get(c) for c in clusters] for name, values in series.items()},
                       ax=ax, title=title, ylabel="accuracy")
    ax.tick_params(axis="x", labelsize=8)
    return ax


def plot_ablation(rows: list[dict], chance: float | None = None, ax=None):
    """Held-out-cluster accuracy against the number of clusters trained on (FLAN, figure 6)."""
    ax = _axes(ax)
    xs = [r["clusters"] for r in rows]
    ys = [r["heldout_cluster_accuracy"] for r in rows]
    ax.plot(xs, ys, "o-", color="#08519c", label="held-out cluster")
    for x, y in zip(xs, ys):
        ax.annotate(f"{y:.0%}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=9)
    if chance is not None:
        ax.axhline(chance, ls="--", color="#999", label=f"chance ({chance:.0%})")
    ax.set_xticks(xs)
    ax.set(xlabel="number of task clusters in the instruction mixture (0 = base model)", ylabel="accuracy",
           ylim=(0, 1.05), title="Does instruction tuning on more clusters help an unseen one?")
    ax.legend()
    return ax


# ---- notebook 3: RLHF ----------------------------------------------------------------------
def plot_rlhf_diagram(ax=None):
    """InstructGPT's three steps as boxes and arrows: which model feeds which."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    ax = _axes(ax, figsize=(10, 3.6))
    boxes = {  # name: (x, y, text, colour)
        "sft": (0.02, 0.55, "1  SFT model\n(notebook 2)", PALETTE[2]),
        "samples": (0.30, 0.55, "K samples per prompt\nranked by the labeler", PALETTE[3]),
        "rm": (0.58, 0.55, "2  reward model\nBradley-Terry on pairs", PALETTE[0]),
        "ref": (0.02, 0.05, "frozen reference\n(copy of SFT)", PALETTE[4]),
        "policy": (0.30, 0.05, "3  PPO policy\n(+ value head)", PALETTE[1]),
        "reward": (0.58, 0.05, "reward = r(x, y)\n - beta * KL(policy || ref)", PALETTE[6]),
    }
    for x, y, text, colour in boxes.values():
        ax.add_patch(FancyBboxPatch((x, y), 0.24, 0.34, boxstyle="round,pad=0.02", fc=colour, ec="#555"))
        ax.text(x + 0.12, y + 0.17, text, ha="center", va="center", fontsize=9)
    arrows = [("sft", "samples", "sample"), ("samples", "rm", "pairs"), ("sft", "ref", "copy"),
              ("sft", "policy", "initialise"), ("rm", "reward", "score"), ("ref", "reward", ""),
              ("policy", "reward", "sample y"), ("reward", "policy", "")]
    centre = {k: (x + 0.12, y + 0.17) for k, (x, y, _, _) in boxes.items()}
    for a, b, label in arrows:
        (x0, y0), (x1, y1) = centre[a], centre[b]
        if (a, b) == ("reward", "policy"):
            y0, y1, rad, label = y0 - 0.12, y1 - 0.12, 0.35, "PPO update"
        elif (a, b) == ("ref", "reward"):
            rad = -0.35
            y0, y1 = y0 - 0.13, y1 - 0.13
        else:
            rad = 0.0
        dx, dy = x1 - x0, y1 - y0
        shrink = 0.13 / max(1e-6, (dx * dx + dy * dy) ** 0.5)
        start, end = (x0 + dx * shrink, y0 + dy * shrink), (x1 - dx * shrink, y1 - dy * shrink)
        if rad:
            start, end = (x0, y0), (x1, y1)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="#333",
                                     connectionstyle=f"arc3,rad={rad}"))
        if label:
            ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + (0.03 if not rad else -0.2), label,
                    ha="center", fontsize=8, color="#333")
    ax.text(0.84, 0.72, "simulated labeler\n(gold score: Helpful,\nHonest, Harmless)", fontsize=8, va="center",
            color="#555")
    ax.set(xlim=(0, 1.0), ylim=(-0.2, 1.0))
    ax.axis("off")
    return ax


def plot_pair_accuracy(per_type: dict[str, float], counts: dict[str, int] | None = None, ax=None,
                       title="Reward model: held-out pairwise accuracy by pair type"):
    """One bar per pair type, with the number of pairs under each, and the 50% chance line."""
    ax = _axes(ax, figsize=(7, 3.2))
    labels = list(per_type)
    bars = ax.bar(range(len(labels)), [per_type[k] for k in labels], color="#6baed6")
    for bar, k in zip(bars, labels):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02, f"{per_type[k]:.0%}", ha="center",
                fontsize=8)
    ax.axhline(0.5, ls="--", color="#888", lw=1, label="chance")
    names = [f"{k}\n(n={counts[k]})" if counts else k for k in labels]
    ax.set_xticks(range(len(labels)), names, fontsize=8)
    ax.set(ylim=(0, 1.1), ylabel="accuracy", title=title)
    ax.legend(loc="lower right")
    return ax


def plot_ppo_curves(rows: list[dict], axes=None, title_suffix=""):
    """Reward-model score, gold score and KL per PPO step, side by side."""
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    steps = [r["step"] for r in rows]
    panels = [("rm_score", "reward-model score (proxy)", "#3182bd"), ("gold_score", "gold score (labeler)", "#31a354"),
              ("kl", "KL(policy || SFT), nats", "#e6550d")]
    for ax, (key, label, colour) in zip(axes, panels):
        ax.plot(steps, [r[key] for r in rows], color=colour, lw=1.5)
        ax.set(xlabel="PPO step", title=label + title_suffix)
        ax.grid(alpha=0.3)
    return axes


class LivePPOPlot:
    """A callback for `train_or_load_ppo(callback=...)`: redraws the three curves every few steps."""

    def __init__(self, every: int = 5):
        self.every, self.rows = every, []

    def __call__(self, step: int, row: dict) -> None:
        from IPython.display import clear_output

        self.rows.append(row)
        if step % self.every == 0:
            clear_output(wait=True)
            plot_ppo_curves(self.rows)
            plt.show()

    def final(self, rows: list[dict]) -> None:
        """The finished curves (also when the run came from the cache and nothing was drawn live)."""
        from IPython.display import clear_output

        if self.rows:
            clear_output(wait=True)
        plot_ppo_curves(rows)
        plt.show()


def plot_gold_vs_kl(best_of_n: list, ppo_points: list[dict], ax=None,
                    title="Gold score against KL from the SFT model"):
    """Gao, Schulman & Hilton's picture: best-of-n (analytic KL) and PPO runs on one set of axes.
    ppo_points: dicts with 'kl', 'gold' and a 'label'."""
    ax = _axes(ax, figsize=(6.5, 4))
    ax.plot([b.kl for b in best_of_n], [b.gold for b in best_of_n], "o-", color="#756bb1", label="best-of-n (gold)")
    for b in best_of_n:
        ax.annotate(f"n={b.n}", (b.kl, b.gold), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.plot([b.kl for b in best_of_n], [b.rm_score for b in best_of_n], "o--", color="#bcbddc",
            label="best-of-n (reward model)")
    for p in ppo_points:
        ax.plot(p["kl"], p["gold"], "s", ms=8, label=p["label"])
    ax.set(xlabel="KL from the SFT model (nats)", ylabel="score", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_kl_sweep(runs: list[dict], highlight: int | None = None, axes=None):
    """Reward hacking: for each KL coefficient, proxy (reward-model) and gold score against KL
    over training. runs: dicts with 'kl_coef' and 'rows' (the PPO log)."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(12, 4), sharex=True)
    colours = plt.cm.viridis([i / max(1, len(runs) - 1) for i in range(len(runs))])
    for i, (run, colour) in enumerate(zip(runs, colours)):
        kl = [r["kl"] for r in run["rows"]]
        lw, alpha = (2.5, 1.0) if highlight in (None, i) else (1.0, 0.3)
        for ax, key in zip(axes, ("rm_score", "gold_score")):
            ax.plot(kl, _smooth([r[key] for r in run["rows"]]), color=colour, lw=lw, alpha=alpha,
                    label=f"beta = {run['kl_coef']:g}")
    axes[0].set(xlabel="KL from the SFT model (nats)", ylabel="reward-model score", title="proxy reward")
    axes[1].set(xlabel="KL from the SFT model (nats)", ylabel="gold score", title="true (gold) reward")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    return axes


def _smooth(values: list[float], window: int = 5) -> list[float]:
    return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
            for i in range(len(values))]
