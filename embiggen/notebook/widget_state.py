"""A saved notebook keeps its widgets: a Jupyter server extension that mends the widget state.

JupyterLab can save the state of a notebook's widgets with the notebook ("Save Widget State
Automatically", which `make lab` turns on), so that a notebook reopened tomorrow draws its
widgets again instead of "Error displaying widget: model not found". But ipywidgets saves
only the widgets whose kernel is connected (`get_state_sync` keeps the models with a live
comm; jupyter-widgets/ipywidgets#3270). Reopen a saved notebook, and its widgets are drawn
from the saved state with no kernel behind them; restoring them marks the notebook changed,
so JupyterLab's autosave (every two minutes) or a Ctrl-S saves it again, this time with none
of those widgets in it; the next time it opens, every widget is an error.

`keep_widget_state` is a pre-save hook: when a notebook that saves widget state is about to
be written without the state of a widget that one of its outputs still shows, the state of
that widget (and of every widget it is made of) is taken from the copy on disk. Widgets no
output shows any more are not brought back, and a notebook that saves no widget state is
written as it came.

Turn it on as a Jupyter server extension (`make lab` writes this file into the venv):
`etc/jupyter/jupyter_server_config.d/embiggen.json` with
``{"ServerApp": {"jpserver_extensions": {"embiggen.notebook.widget_state": true}}}``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_REFERENCE = re.compile(r"IPY_MODEL_([0-9A-Za-z_-]+)")


def shown_widgets(notebook: dict) -> set[str]:
    """The model ids of the widgets the notebook's outputs show."""
    return {out["data"][WIDGET_VIEW].get("model_id") or "" for cell in notebook.get("cells", [])
            for out in cell.get("outputs", []) if WIDGET_VIEW in out.get("data", {})} - {""}


def widget_states(notebook: dict) -> dict | None:
    """The widget state saved with the notebook (model id -> state), or None if it saves none."""
    saved = notebook.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE)
    return None if saved is None else saved.setdefault("state", {})


def references(state) -> set[str]:
    """The model ids a widget state (or several) refers to: "IPY_MODEL_<id>" (children, layouts, styles)."""
    return set(_REFERENCE.findall(json.dumps(state)))


def parts(ids: set[str], states: dict) -> set[str]:
    """`ids` and every model they refer to ("IPY_MODEL_<id>": children, layouts, styles), as far
    as `states` has them."""
    found, todo = set(), [i for i in ids if i in states]
    while todo:
        model_id = todo.pop()
        if model_id in found:
            continue
        found.add(model_id)
        todo += [i for i in references(states[model_id]) if i in states and i not in found]
    return found


def mend(notebook: dict, on_disk: dict) -> list[str]:
    """Put into `notebook`'s widget state, from `on_disk`'s, every widget an output of
    `notebook` shows that its own state lacks, with the widgets it is made of. Returns the
    ids added (none if the notebook saves no widget state)."""
    states = widget_states(notebook)
    if states is None:
        return []
    old = widget_states(on_disk) or {}
    missing = {i for i in shown_widgets(notebook) if i not in states}
    added = sorted(i for i in parts(missing, old) if i not in states)
    states.update({i: old[i] for i in added})
    return added


def keep_widget_state(model: dict, path: str, contents_manager, **kwargs) -> None:
    """Jupyter server pre-save hook (see the module docstring). It reads the copy on disk only
    when the notebook about to be saved lacks a widget it shows, and never stops a save."""
    notebook = model.get("content")
    if model.get("type") != "notebook" or not isinstance(notebook, dict):
        return
    states = widget_states(notebook)
    if states is None or shown_widgets(notebook) <= set(states):
        return
    file = inside_root(contents_manager.root_dir, path)
    if file is None:
        return  # a path outside the server's root: not ours to read (the server refuses the save itself)
    try:
        on_disk = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # a new notebook, or one that is not JSON on disk: nothing to keep
    added = mend(notebook, on_disk)
    if added:
        contents_manager.log.info("embiggen: kept the saved state of %d widgets that %s still shows", len(added), path)


def inside_root(root_dir: str, path: str) -> Path | None:
    """The file the contents path `path` names under the server's `root_dir`, or None if it lies
    outside it (`../outside.ipynb`, an absolute path, a symbolic link that leads out), as the
    contents manager confines its own paths."""
    root = Path(os.path.realpath(root_dir))
    file = Path(os.path.realpath(root / path.strip("/")))
    return file if file != root and file.is_relative_to(root) else None


def _jupyter_server_extension_points():
    return [{"module": "embiggen.notebook.widget_state"}]


def _load_jupyter_server_extension(server_app) -> None:
    server_app.contents_manager.register_pre_save_hook(keep_widget_state)
