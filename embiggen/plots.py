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
