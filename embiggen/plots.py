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
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=title)
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


def plot_size_sweep(rows: list[dict], ax=None):
    """Validation loss (and fact recall) against parameter count, one point per model size."""
    ax = _axes(ax)
    rows = sorted(rows, key=lambda r: r["params"])
    params = [r["params"] for r in rows]
    ax.plot(params, [r["val_loss"] for r in rows], "o-", color="#08519c")
    for r in rows:
        ax.annotate(f"{r['params'] / 1e6:.2f}M\nloss {r['val_loss']:.3f}\nfacts {r['fact_cloze_accuracy']:.0%}",
                    (r["params"], r["val_loss"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="parameters (log scale)", ylabel="validation loss", title="Size matters: loss against model size")
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
