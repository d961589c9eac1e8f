"""The server extension that keeps a saved notebook's widget state (embiggen.notebook.widget_state).
The browser test (tests/browser) checks the same in JupyterLab: reopened, saved before
running, reopened again."""

import copy
import json
import logging
from types import SimpleNamespace

from embiggen.notebook.widget_state import WIDGET_STATE, WIDGET_VIEW, keep_widget_state, mend, parts, shown_widgets


def widget(name: str, *refs: str) -> dict:
    return {"model_name": name, "model_module": "@jupyter-widgets/controls", "model_module_version": "2.0.0",
            "state": {"children": [f"IPY_MODEL_{r}" for r in refs]}}


def view(model_id: str) -> dict:
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/plain": "Interactive widget", WIDGET_VIEW: {"version_major": 2, "version_minor": 0,
                                                                     "model_id": model_id}}}


def notebook(outputs: list, states: dict | None) -> dict:
    meta = {} if states is None else {"widgets": {WIDGET_STATE: {"version_major": 2, "version_minor": 0,
                                                                 "state": states}}}
    return {"cells": [{"cell_type": "code", "source": "", "metadata": {}, "execution_count": 1, "outputs": outputs}],
            "metadata": meta, "nbformat": 4, "nbformat_minor": 5}


#: on disk: widget "box" (a VBox of "text" and "button", "button" with its "style"), and "old", shown by nothing
ON_DISK = {"box": widget("VBoxModel", "text", "button"), "text": widget("TextModel"),
           "button": widget("ButtonModel", "style"), "style": widget("ButtonStyleModel"), "old": widget("HTMLModel")}


def test_the_parts_of_a_widget_are_every_model_it_refers_to():
    assert parts({"box"}, ON_DISK) == {"box", "text", "button", "style"}
    assert parts({"gone"}, ON_DISK) == set()
    looped = {"a": widget("VBoxModel", "b"), "b": widget("VBoxModel", "a")}
    assert parts({"a"}, looped) == {"a", "b"}
    assert shown_widgets(notebook([view("box"), view(""), {"output_type": "stream", "text": "hi"}], {})) == {"box"}


def test_a_shown_widget_missing_from_the_state_is_kept_from_the_copy_on_disk():
    """ipywidgets saved a reopened notebook with none of the widgets it restored (not live)."""
    saving = notebook([view("box")], {})
    assert mend(saving, notebook([view("box")], copy.deepcopy(ON_DISK))) == ["box", "button", "style", "text"]
    states = saving["metadata"]["widgets"][WIDGET_STATE]["state"]
    assert states == {k: ON_DISK[k] for k in ("box", "text", "button", "style")}  # not "old": no output shows it


def test_live_widgets_and_notebooks_without_widget_state_are_left_as_they_are():
    live = {"new": widget("VBoxModel", "new-text"), "new-text": widget("TextModel")}
    saving = notebook([view("new")], copy.deepcopy(live))  # the cell ran again: a new widget, all of it saved
    assert mend(saving, notebook([view("box")], copy.deepcopy(ON_DISK))) == []
    assert saving["metadata"]["widgets"][WIDGET_STATE]["state"] == live
    plain = notebook([view("box")], None)  # JupyterLab's saveState is off: the notebook saves no widget state
    assert mend(plain, notebook([view("box")], copy.deepcopy(ON_DISK))) == [] and plain["metadata"] == {}
    # a widget whose state is gone from the disk too stays missing: nothing is invented
    assert mend(notebook([view("box")], {}), notebook([], {})) == []


def test_the_pre_save_hook_reads_the_copy_on_disk_and_never_stops_a_save(tmp_path):
    manager = SimpleNamespace(root_dir=str(tmp_path), log=logging.getLogger("test"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nb.ipynb").write_text(json.dumps(notebook([view("box")], ON_DISK)))
    model = {"type": "notebook", "content": notebook([view("box")], {})}
    keep_widget_state(model=model, path="/sub/nb.ipynb", contents_manager=manager)
    assert set(model["content"]["metadata"]["widgets"][WIDGET_STATE]["state"]) == {"box", "text", "button", "style"}
    for path, content in (("sub/new.ipynb", notebook([view("box")], {})),  # not on disk yet
                          ("sub/nb.ipynb", "not a notebook")):
        keep_widget_state(model={"type": "notebook", "content": content}, path=path, contents_manager=manager)
    (tmp_path / "sub" / "bad.ipynb").write_text("{ not json")
    model = {"type": "notebook", "content": notebook([view("box")], {})}
    keep_widget_state(model=model, path="sub/bad.ipynb", contents_manager=manager)
    assert model["content"]["metadata"]["widgets"][WIDGET_STATE]["state"] == {}
    model = {"type": "file", "content": "text"}
    keep_widget_state(model=model, path="sub/nb.ipynb", contents_manager=manager)
    assert model == {"type": "file", "content": "text"}


def test_the_pre_save_hook_reads_nothing_outside_the_servers_root(tmp_path, monkeypatch):
    """A crafted contents path (`../outside.ipynb`, an absolute one, a link that leads out) is not
    read: the hook confines paths to the root as the contents manager does."""
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.ipynb"
    outside.write_text(json.dumps(notebook([view("box")], ON_DISK)))
    (root / "link.ipynb").symlink_to(outside)
    manager = SimpleNamespace(root_dir=str(root), log=logging.getLogger("test"))
    read = []
    real_read_text = type(outside).read_text
    monkeypatch.setattr(type(outside), "read_text", lambda self, *a, **k: read.append(self) or real_read_text(self, *a, **k))
    for path in ("../outside.ipynb", "/../outside.ipynb", "sub/../../outside.ipynb", "link.ipynb", str(outside)):
        model = {"type": "notebook", "content": notebook([view("box")], {})}
        keep_widget_state(model=model, path=path, contents_manager=manager)
        assert model["content"]["metadata"]["widgets"][WIDGET_STATE]["state"] == {}, path
    assert not [f for f in read if not f.resolve().is_relative_to(root.resolve())]  # an absolute path is under the root
    (root / "inside.ipynb").write_text(json.dumps(notebook([view("box")], ON_DISK)))  # and inside, it still mends
    model = {"type": "notebook", "content": notebook([view("box")], {})}
    keep_widget_state(model=model, path="inside.ipynb", contents_manager=manager)
    assert "box" in model["content"]["metadata"]["widgets"][WIDGET_STATE]["state"] and read
