"""One-line helpers for the notebooks: set-up, and tables a learner reads at a glance."""

from __future__ import annotations

import base64
import html
import io
import json
import platform
import random
import re
import sys
from pathlib import Path

import matplotlib
import torch
import transformers
from IPython import get_ipython
from IPython.display import HTML, display
from PIL import Image

from . import __version__
from .presets import get_preset
from .utils import UserError, atomic_write_text, pick_device, set_seed, set_threads


def setup(preset=None, seed: int | None = None, base: str | None = None):
    """Print versions, pick the preset (and the pretrained `base` model to start from, else
    $EMBIGGEN_BASE, else the embedded one), device and thread count, seed everything."""
    shell = get_ipython()
    if shell is not None:  # a problem the learner can fix reads as one line, not a traceback
        shell.set_custom_exc((UserError,), _one_line_error)
    preset = get_preset(preset, base)
    transformers.logging.disable_progress_bar()  # our own bars are enough
    threads = set_threads()
    set_seed(preset.seed if seed is None else seed)
    print(f"python {platform.python_version()} | torch {torch.__version__} | transformers {transformers.__version__}"
          f" | matplotlib {matplotlib.__version__} | embiggen {__version__}")
    print(f"preset {preset.name!r} | device {pick_device()} | {threads} CPU threads | seed {preset.seed}"
          + (f" | base model {preset.base_model}" if preset.base_model else ""))
    if preset.base_model:
        print("The prose around these cells describes the committed run, which starts from the embedded model: "
              "numbers from your model will differ, and so may what they show.")
    return preset


def _one_line_error(shell, etype, value, tb, tb_offset=None):
    """IPython's handler for `UserError`: the message, no traceback (still an error for nbval)."""
    stb = [f"{etype.__name__}: {value}"]
    shell._showtraceback(etype, value, stb)
    return stb


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


# ---------------------------------------------------------------------------------------
# Committing executed notebooks
# ---------------------------------------------------------------------------------------
PROGRESS_BAR = re.compile(r"\d+%\|")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _is_progress_bar(output: dict) -> bool:
    """A saved tqdm bar: a widget (stored as its first frame, "0%| | 0/800", as if nothing ran) or
    stderr that holds nothing but bars."""
    data = output.get("data", {})
    if WIDGET_VIEW in data:
        return bool(PROGRESS_BAR.search("".join(data.get("text/plain", ""))))
    if output.get("name") == "stderr":
        lines = [line for line in re.split(r"[\r\n]+", "".join(output.get("text", ""))) if line.strip()]
        return bool(lines) and all(PROGRESS_BAR.search(line) for line in lines)
    return False


def palette_png(png_base64: str, colours: int = 256) -> str:
    """A plot as a palette PNG: matplotlib's flat colours survive quantisation to 256 colours and
    the file shrinks about threefold. Returns the input if that is not smaller."""
    raw = base64.b64decode(png_base64)
    image = Image.open(io.BytesIO(raw))
    if image.mode == "P":
        return png_base64
    if image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255):
        image = image.convert("RGB")  # opaque: the exact median-cut palette works on RGB only
    method = Image.Quantize.MEDIANCUT if image.mode == "RGB" else Image.Quantize.FASTOCTREE
    out = io.BytesIO()
    image.quantize(colors=colours, method=method).save(out, "PNG", optimize=True)
    smaller = out.getvalue()
    return base64.b64encode(smaller).decode() if len(smaller) < len(raw) else png_base64


INLINE_PNG = re.compile(r"(data:image/png;base64,)([A-Za-z0-9+/=]+)")
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_REFERENCE = re.compile(r"IPY_MODEL_(\w+)")


def _used_widget_state(nb: dict) -> None:
    """Keep only the saved widget models that a remaining output shows, and the models those
    refer to (layouts, styles, children): a dropped progress bar leaves its models behind. Plots
    saved inside an Output widget become palette PNGs too."""
    state = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state")
    if not state:
        return
    todo = [out["data"][WIDGET_VIEW]["model_id"] for cell in nb["cells"] for out in cell.get("outputs", [])
            if WIDGET_VIEW in out.get("data", {})]
    keep = set()
    while todo:
        model_id = todo.pop()
        if model_id in keep or model_id not in state:
            continue
        keep.add(model_id)
        todo += WIDGET_REFERENCE.findall(json.dumps(state[model_id]))
    for model_id in [m for m in state if m not in keep]:
        del state[model_id]
    for model in state.values():  # plots an Output widget shows are saved inside its state
        for out in model.get("state", {}).get("outputs", []) or []:
            if "image/png" in out.get("data", {}):
                out["data"]["image/png"] = palette_png(out["data"]["image/png"])


def slim_notebook(nb: dict) -> dict:
    """Ready an executed notebook for committing: drop saved progress bars (and the widget
    models only they used) and per-cell timestamps, store plots as palette PNGs. Changes `nb`
    in place and returns it."""
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("execution", None)  # per-cell timestamps: noise in every diff
        if "outputs" not in cell:
            continue
        cell["outputs"] = [out for out in cell["outputs"] if not _is_progress_bar(out)]
        for out in cell["outputs"]:
            if "image/png" in out.get("data", {}):
                out["data"]["image/png"] = palette_png(out["data"]["image/png"])
            if "text/html" in out.get("data", {}):  # a widget's snapshot carries its plot inline
                html_text = "".join(out["data"]["text/html"])
                out["data"]["text/html"] = INLINE_PNG.sub(lambda m: m.group(1) + palette_png(m.group(2)), html_text)
    _used_widget_state(nb)
    return nb


def main(paths: list[str]) -> None:
    """`python -m embiggen.notebook notebooks/*.ipynb`: slim executed notebooks in place."""
    for path in map(Path, paths):
        before = path.stat().st_size
        nb = slim_notebook(json.loads(path.read_text()))
        atomic_write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"{path}: {before // 1024} KB -> {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main(sys.argv[1:])
