"""Every notebook Run All in JupyterLab in Chromium, and every widget used as a learner would.
See `harness.py` for how; `make test` runs this after nbval."""

from __future__ import annotations

import inspect
import json

import pytest
from harness import NOTEBOOKS, RECIPES, check_notebook

import embiggen.notebook.widgets as widgets

#: Notebooks without a widget (the appendix writes PPO's pieces out as code); the browser test skips them, and a
#: test below makes sure they really have none.
NO_WIDGETS = {"03b_ppo_line_by_line.ipynb"}
MAIN_NOTEBOOKS = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb") if p.name not in NO_WIDGETS)
SEEN: set[str] = set()


def widget_classes() -> set[str]:
    return {name for name, obj in vars(widgets).items()
            if inspect.isclass(obj) and issubclass(obj, widgets.LiveWidget) and obj is not widgets.LiveWidget}


def test_every_widget_class_has_a_recipe():
    assert widget_classes() == set(RECIPES)


def test_the_solutions_have_no_widgets():
    """The exercise solutions are validated by nbval; this test covers where widgets are."""
    for path in (NOTEBOOKS / "solutions").glob("*.ipynb"):
        code = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        assert not any(f"{name}(" in code for name in widget_classes()), path.name


def test_the_notebooks_left_out_have_no_widgets():
    for name in NO_WIDGETS:
        code = "".join("".join(c["source"]) for c in json.loads((NOTEBOOKS / name).read_text())["cells"]
                       if c["cell_type"] == "code")
        assert not any(f"{widget}(" in code for widget in widget_classes()), name


#: Notebook 2 is reopened twice, the second time saved before anything ran, as a learner's Ctrl-S (or JupyterLab's
#: autosave: restoring widgets marks a notebook changed) would: ipywidgets alone saves it without the widgets it
#: restored (they have no kernel: jupyter-widgets/ipywidgets#3270), and the next reopening shows "model not found".
#: `embiggen.notebook.widget_state` keeps them; without it this test fails.
REOPENS = {"02_instruction_tuning.ipynb": 2}


@pytest.mark.parametrize("name", MAIN_NOTEBOOKS)
def test_notebook_widgets_work_in_the_browser(name, lab, browser, shots):
    summary = check_notebook(browser, lab, name, shots, reopen=REOPENS.get(name, 1))
    print(f"\n{name}: ran in {summary['run_seconds']} s; widgets {summary['widgets']}")
    SEEN.update(summary["widgets"])
    assert summary["widgets"], f"{name}: no widget found on the page"
    assert not summary["problems"], "\n".join(summary["problems"])


def test_every_widget_class_was_used_in_the_browser():
    if len(SEEN) == 0:
        pytest.skip("the notebooks' browser tests did not run in this session")
    assert SEEN == widget_classes()


BROKEN = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": [
    "from embiggen.data.tasks import TaskExample\n",
    "from embiggen.notebook.widgets import ComparisonWidget\n",
    "\n",
    "examples = [TaskExample('arithmetic', 0, f'What is {i} plus 1?', str(i + 1)) for i in range(3)]\n",
    "raising = ComparisonWidget({'echo': lambda x: x.upper()}, examples)\n",
    "raising.models['echo'] = lambda x: 1 / 0  # from now on every callback raises in the kernel\n",
    "raising"]},
    {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": [
     "silent = ComparisonWidget({'echo': lambda x: x.upper()}, examples)\n",
     "silent.refresh = lambda use_custom=False: None  # a callback that does nothing at all\n",
     "silent"]}],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
    "nbformat": 4, "nbformat_minor": 5}


def test_a_broken_widget_callback_fails_the_browser_test(lab, browser, shots):
    """The test of the test: a widget whose callback raises, and one whose callback does
    nothing, are both caught."""
    (lab.root / "broken.ipynb").write_text(json.dumps(BROKEN))
    summary = check_notebook(browser, lab, "broken.ipynb", shots, step_timeout=5, reopen=0, steps=1)
    problems = "\n".join(summary["problems"])
    assert summary["widgets"] == ["ComparisonWidget", "ComparisonWidget"]
    assert "broken-1-ComparisonWidget step 1" in problems and "ZeroDivisionError" in problems
    assert "broken-2-ComparisonWidget step 1 (select .embiggen-pick select): nothing visible changed" in problems
