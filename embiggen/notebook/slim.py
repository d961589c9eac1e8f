"""Ready executed notebooks for committing: `python -m embiggen.notebook.slim notebooks/*.ipynb`.

A notebook executed for committing carries noise a reader never needs: saved progress bars
(stored as their first frame, "0%| | 0/800", as if nothing ran), per-cell timestamps that
change every diff, plots as full-colour PNGs three times the size they need. This drops the
first two and stores plots as palette PNGs.

And a widget output gets its picture in an output of its own. A saved widget carries a text
and a snapshot of what it showed, for wherever it cannot be drawn; but an HTML export
(`jupyter nbconvert --to html`, nbviewer, course sites) of a notebook that saves widget state
shows the widget's view alone, which stays blank without the network that fetches the widget
library. So the snapshot moves into the next output, which hides itself (CSS) where the
widget before it is drawn, and shows everywhere else: an export offline, GitHub, a notebook
opened untrusted.
"""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from pathlib import Path

from PIL import Image

from embiggen.notebook.widget_state import WIDGET_STATE, WIDGET_VIEW, parts, shown_widgets
from embiggen.utils import atomic_write_text

PROGRESS_BAR = re.compile(r"\d+%\|")
SNAPSHOT_CLASS = "embiggen-snapshot"
#: Hides a snapshot output wherever the widget output just before it was drawn (it then holds `.embiggen-widget`).
HIDE_WHEN_DRAWN = ("<style>.jp-OutputArea-child:has(.embiggen-widget) + .jp-OutputArea-child ."
                   f"{SNAPSHOT_CLASS} {{display: none}}</style>")
INLINE_PNG = re.compile(r"(data:image/png;base64,)([A-Za-z0-9+/=]+)")


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


def _used_widget_state(nb: dict) -> None:
    """Keep only the saved widget models that a remaining output shows, and the models those
    refer to (layouts, styles, children): a dropped progress bar leaves its models behind. Plots
    saved inside an Output widget become palette PNGs too."""
    state = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state")
    if not state:
        return
    keep = parts(shown_widgets(nb), state)
    for model_id in [m for m in state if m not in keep]:
        del state[model_id]
    for model in state.values():  # plots an Output widget shows are saved inside its state
        for out in model.get("state", {}).get("outputs", []) or []:
            if "image/png" in out.get("data", {}):
                out["data"]["image/png"] = palette_png(out["data"]["image/png"])


def split_widget_snapshots(cell: dict) -> None:
    """Each widget output of `cell` keeps its view and its text; its HTML snapshot moves into a
    new output right after it, which shows only where the widget is not drawn."""
    outputs = []
    for out in cell.get("outputs", []):
        outputs.append(out)
        data = out.get("data", {})
        if WIDGET_VIEW in data and "text/html" in data:
            snapshot = "".join(data.pop("text/html"))
            outputs.append({"output_type": "display_data", "metadata": {"embiggen": "widget snapshot"},
                            "data": {"text/html": f"{HIDE_WHEN_DRAWN}<div class='{SNAPSHOT_CLASS}'>{snapshot}</div>"}})
    cell["outputs"] = outputs


def slim_notebook(nb: dict) -> dict:
    """Ready an executed notebook for committing: drop saved progress bars (and the widget
    models only they used) and per-cell timestamps, store plots as palette PNGs, give each
    widget's snapshot an output of its own (`split_widget_snapshots`). Changes `nb` in place
    and returns it."""
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
                smaller = INLINE_PNG.sub(lambda m: m.group(1) + palette_png(m.group(2)), html_text)
                if smaller != html_text:  # else left as it was written (a list of lines, say)
                    out["data"]["text/html"] = smaller
        split_widget_snapshots(cell)
    _used_widget_state(nb)
    return nb


def main(paths: list[str]) -> None:
    """`python -m embiggen.notebook.slim notebooks/*.ipynb`: slim executed notebooks in place."""
    for path in map(Path, paths):
        before = path.stat().st_size
        nb = slim_notebook(json.loads(path.read_text()))
        atomic_write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"{path}: {before // 1024} KB -> {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main(sys.argv[1:])
