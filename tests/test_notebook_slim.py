import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from embiggen.notebook.slim import palette_png, slim_notebook  # noqa: E402


def _plot_png() -> str:
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(range(50), [x * x for x in range(50)], color="#31a354")
    ax.bar(range(5), [3, 1, 4, 1, 5], color="#de2d26")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def test_slim_drops_saved_progress_bars_and_shrinks_plots_keeping_everything_else():
    png = _plot_png()
    bar = {"output_type": "display_data", "metadata": {},
           "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "x"},
                    "text/plain": ["pretrain laptop:   0%|          | 0/800 [00:00<?, ?it/s]"]}}
    widget = {"output_type": "display_data", "metadata": {},
              "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "y"}, "text/plain": ["VBox(...)"]}}
    stderr_bar = {"output_type": "stream", "name": "stderr", "text": ["sft:  50%|█   | 1/2\r", "sft: 100%|██| 2/2\n"]}
    warning = {"output_type": "stream", "name": "stderr", "text": ["UserWarning: careful\n", "x:  50%|█ | 1/2\n"]}
    printed = {"output_type": "stream", "name": "stdout", "text": ["accuracy 59%|ish\n"]}
    plot = {"output_type": "display_data", "metadata": {}, "data": {"image/png": png, "text/plain": ["<Figure>"]}}
    timing = {"execution": {"iopub.execute_input": "2026-11-27T08:47:01.5Z"}, "tags": ["keep"]}
    nb = {"cells": [{"cell_type": "code", "metadata": timing, "outputs": [bar, widget, stderr_bar, warning, printed,
                                                                          plot]},
                    {"cell_type": "markdown", "source": ["# title"]}]}
    out = slim_notebook(nb)["cells"][0]["outputs"]
    assert nb["cells"][0]["metadata"] == {"tags": ["keep"]}  # timestamps gone, other metadata kept
    assert out[:3] == [widget, warning, printed]  # bars gone; a real widget, a warning and prints stay
    slim = out[3]["data"]["image/png"]
    assert len(slim) < len(png)
    a = Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB")
    b = Image.open(io.BytesIO(base64.b64decode(slim))).convert("RGB")
    assert a.size == b.size
    # flat plot colours survive: no pixel moves by more than a little in any channel
    diff = max(abs(x - y) for pa, pb in zip(a.getdata(), b.getdata()) for x, y in zip(pa, pb))
    assert diff <= 16
    assert palette_png(slim) == slim  # already a palette PNG: left as it is


def test_slim_drops_the_widget_models_only_a_dropped_bar_used():
    view = "application/vnd.jupyter.widget-view+json"

    def model(name, **state):
        return {"model_name": name, "model_module": "@jupyter-widgets/controls", "state": state}

    state = {
        "bar": model("HBoxModel", children=["IPY_MODEL_barprogress"], layout="IPY_MODEL_barlayout"),
        "barprogress": model("FloatProgressModel", value=800.0), "barlayout": model("LayoutModel"),
        "box": model("VBoxModel", children=["IPY_MODEL_dd", "IPY_MODEL_out"], layout="IPY_MODEL_boxlayout"),
        "dd": model("DropdownModel", style="IPY_MODEL_ddstyle"), "ddstyle": model("DescriptionStyleModel"),
        "out": model("OutputModel", outputs=[{"output_type": "display_data", "data": {"image/png": _plot_png()}}]),
        "boxlayout": model("LayoutModel"),
    }
    png = state["out"]["state"]["outputs"][0]["data"]["image/png"]
    nb = {"metadata": {"widgets": {"application/vnd.jupyter.widget-state+json": {"state": state, "version_major": 2}}},
          "cells": [{"cell_type": "code", "outputs": [
              {"output_type": "display_data", "data": {view: {"model_id": "bar"}, "text/plain": ["ppo:   0%| | 0/60"]}},
              {"output_type": "display_data", "data": {view: {"model_id": "box"}, "text/plain": ["VBox(...)"]}}]}]}
    slim_notebook(nb)
    kept = nb["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert sorted(kept) == ["box", "boxlayout", "dd", "ddstyle", "out"]
    assert len(kept["out"]["state"]["outputs"][0]["data"]["image/png"]) < len(png)  # the widget's plot shrank too


def test_a_widgets_snapshot_gets_an_output_of_its_own_that_hides_where_the_widget_is_drawn():
    from embiggen.notebook.slim import SNAPSHOT_CLASS, split_widget_snapshots

    widget = {"output_type": "execute_result", "execution_count": 3, "metadata": {},
              "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "m1"},
                       "text/plain": ["Interactive widget: run this cell"], "text/html": ["<b>what it showed</b>"]}}
    table = {"output_type": "display_data", "metadata": {}, "data": {"text/html": ["<table></table>"]}}
    cell = {"cell_type": "code", "outputs": [widget, table]}
    split_widget_snapshots(cell)
    view, snapshot, rest = cell["outputs"]
    assert "text/html" not in view["data"] and view["data"]["text/plain"] == ["Interactive widget: run this cell"]
    assert snapshot["output_type"] == "display_data" and rest is table
    html = snapshot["data"]["text/html"]
    assert f"<div class='{SNAPSHOT_CLASS}'><b>what it showed</b></div>" in html
    assert ":has(.embiggen-widget) + .jp-OutputArea-child" in html and "display: none" in html
    split_widget_snapshots(cell)  # slimming again changes nothing
    assert len(cell["outputs"]) == 3
