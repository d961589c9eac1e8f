"""One-line helpers for the notebooks: set-up, and tables a learner reads at a glance."""

from __future__ import annotations

import html
import platform

from .presets import get_preset
from .utils import pick_device, set_seed, set_threads


def setup(preset=None, seed: int | None = None):
    """Print versions, pick the preset, device and thread count, seed everything."""
    import matplotlib
    import torch
    import transformers

    from . import __version__

    preset = get_preset(preset)
    transformers.logging.disable_progress_bar()  # our own bars are enough
    threads = set_threads()
    set_seed(preset.seed if seed is None else seed)
    print(f"python {platform.python_version()} | torch {torch.__version__} | transformers {transformers.__version__}"
          f" | matplotlib {matplotlib.__version__} | embiggen {__version__}")
    print(f"preset {preset.name!r} | device {pick_device()} | {threads} CPU threads | seed {preset.seed}")
    return preset


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


def show(rows: list[dict], columns: list[str] | None = None, max_rows: int = 20, title: str | None = None):
    """A list of dicts as an HTML table (with an optional title above it)."""
    import html

    from IPython.display import HTML, display

    heading = f"<b style='white-space:pre-wrap'>{html.escape(title)}</b>" if title else ""
    display(HTML(heading + table_html(rows, columns, max_rows)))


def people_rows(world, n: int = 8) -> list[dict]:
    return [{"name": p.name, "town": p.town, "job": p.job, "pet": p.pet, "colour": p.colour, "food": p.food,
             "age": p.age, "pretraining only": p.pretraining_only} for p in world.people[:n]]


def corpus_examples(world, seed: int = 0) -> list[dict]:
    """One document of each kind in the pretraining corpus."""
    import random

    rng = random.Random(seed)
    return [{"kind": k, "document": make(rng)} for k, make in world.document_kinds().items()]
