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
