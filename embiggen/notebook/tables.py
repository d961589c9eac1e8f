"""Tables a learner reads at a glance: lists of dicts as HTML, rates as percentages."""

from __future__ import annotations

import html
import random

from IPython.display import HTML, display


def table_html(rows: list[dict], columns: list[str] | None = None, max_rows: int = 20) -> str:
    """A small HTML table of dicts; booleans shown as ✓ / ✗."""
    if not rows:
        return "<i>(nothing to show)</i>"
    columns = columns or list(rows[0])

    def cell(v):
        if isinstance(v, bool):
            return "<span style='color:#2a2'>✓</span>" if v else "<span style='color:#c22'>✗</span>"
        if isinstance(v, float):
            return f"{v:.3g}"
        return html.escape(str(v)).replace("\n", "⏎")

    head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{cell(r.get(c, ''))}</td>" for c in columns)
                   + "</tr>" for r in rows[:max_rows])
    more = f"<small>… {len(rows) - max_rows} more rows</small>" if len(rows) > max_rows else ""
    return f"<table>{head}{body}</table>{more}"


def percent(rate: float, digits: int = 0) -> str:
    """A rate as a table shows it: 0.873 -> '87%' (NaN, a rate of nothing, -> '—')."""
    return "—" if rate != rate else f"{rate:.{digits}%}"


def show(rows: list[dict], columns: list[str] | None = None, max_rows: int = 20, title: str | None = None):
    """A list of dicts as an HTML table (with an optional title above it)."""
    heading = f"<b style='white-space:pre-wrap'>{html.escape(title)}</b>" if title else ""
    display(HTML(heading + table_html(rows, columns, max_rows)))


def people_rows(world, n: int = 8) -> list[dict]:
    return [{"name": p.name, "town": p.town, "job": p.job, "pet": p.pet, "colour": p.colour, "food": p.food,
             "age": p.age, "seen in": "pretraining only" if p.pretraining_only else "pretraining and SFT"}
            for p in world.people[:n]]


def corpus_examples(world, seed: int = 0) -> list[dict]:
    """One document of each kind in the pretraining corpus."""
    rng = random.Random(seed)
    return [{"kind": k, "document": make(rng)} for k, make in world.document_kinds().items()]


def parameter_rows(model) -> list[dict]:
    """One row per kind of weight in a causal LM (embedding, each block's attention and MLP
    matrices and norms, the final norm): its shape, how many there are and their parameters.
    Tied input and output embeddings are counted once, as `num_parameters` counts them."""
    rows: dict[str, dict] = {}
    for name, p in model.named_parameters():  # named_parameters yields a tied weight once
        kind = ".".join(part for part in name.split(".") if not part.isdigit())
        row = rows.setdefault(kind, {"weight": kind, "shape": " × ".join(map(str, p.shape)), "count": 0,
                                     "parameters": 0})
        row["count"] += 1
        row["parameters"] += p.numel()
    total = sum(r["parameters"] for r in rows.values())
    count = sum(r["count"] for r in rows.values())
    return [*rows.values(), {"weight": "total", "shape": "", "count": count, "parameters": total}]


def training_sample_rows(log) -> list[dict]:
    """Pretraining's greedy samples (`TrainLog.samples`) as rows: the step, the validation loss
    then, and what the model wrote after each prompt."""
    rows = []
    for i, step in enumerate(log.val_steps):
        row = {"step": step, "validation loss": f"{log.val_loss[i]:.2f}"}
        for prompt, texts in log.samples.items():
            row[prompt] = texts[i] if i < len(texts) else ""
        rows.append(row)
    return rows
