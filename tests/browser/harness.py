"""Drive JupyterLab in a real browser the way a learner does: open a notebook, Run All, then use
every Embiggen widget (move a slider, pick from a menu, type and press the button) and check
that what the page shows changed, with no error in the widget, the notebook or the browser
console.

The browser is Debian's `chromium`, driven by Playwright with `executable_path` (Playwright's
own browser download needs the network). JupyterLab runs on 127.0.0.1 on a free port with no
token, on a temporary copy of the notebooks, with the `smoke` preset and a private cache; it is
stopped by its process group, whatever happens.

Each widget class has a recipe: the steps a learner takes, each with what it should do to the
page. A class in `embiggen.notebook.widgets` without a recipe is an error, so a new widget cannot
escape the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
#: Where Debian puts its Chromium; $EMBIGGEN_CHROMIUM overrides it.
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")

LONG_PROMPT = " ".join(["Where does Alma Brook live?"] * 60)  # 1,679 characters: under the 2,000-character
# limit, far past the embedded model's 256 tokens


@dataclass
class Step:
    """One thing a learner does to a widget. `action`: "fill" (type into `target`), "press"
    (keys on `target`), "select" (menu `target`, option `value`), "click". `expect`: "change"
    (the widget's visible content changes), or "notice" (a one-line message about the input
    appears; nothing is an error)."""
    action: str
    target: str
    value: str | int | None = None
    expect: str = "change"
    then_click: str | None = None
    says: str | None = None  # text the notice must contain


#: The steps a learner takes with each widget class (CSS classes from `LiveWidget._tag`).
RECIPES: dict[str, list[Step]] = {
    "AutocompleteWidget": [
        Step("fill", ".embiggen-prefix textarea", "Alma Brook keeps a"),
        Step("click", ".embiggen-tokens button >> nth=0"),
        Step("fill", ".embiggen-prefix textarea", "", expect="notice"),
    ],
    "SamplingWidget": [
        Step("press", ".embiggen-temperature .noUi-handle", "ArrowRight"),
        Step("press", ".embiggen-top-p .noUi-handle", "ArrowLeft"),
        Step("fill", ".embiggen-prompt input", "The dog", then_click=None),
        Step("click", ".embiggen-sample"),
        Step("fill", ".embiggen-prompt input", LONG_PROMPT, expect="notice", says="tokens long"),
    ],
    "ComparisonWidget": [
        Step("select", ".embiggen-pick select", 2),
        Step("fill", ".embiggen-custom textarea", "What is 3 plus 4? Give the number.", then_click=".embiggen-answer"),
        Step("fill", ".embiggen-custom textarea", LONG_PROMPT, then_click=".embiggen-answer", expect="notice",
             says="tokens long"),
    ],
    "AlignmentComparisonWidget": [
        Step("select", ".embiggen-pick select", 3),
        Step("select", ".embiggen-kind select", 1, expect="nothing"),
        Step("fill", ".embiggen-custom textarea", "Where does Zed Quill live?", then_click=".embiggen-answer"),
    ],
    "RewardInspector": [
        Step("fill", ".embiggen-response textarea", "I do not know.", then_click=".embiggen-score"),
        Step("select", ".embiggen-pick select", 4),
    ],
    "KLSweepViewer": [
        Step("press", ".embiggen-run .noUi-handle", "ArrowRight"),
    ],
    "GroupWidget": [
        Step("select", ".embiggen-pick select", 2),
        Step("press", ".embiggen-group-size .noUi-handle", "ArrowLeft"),
        Step("click", ".embiggen-sample"),
        Step("fill", ".embiggen-custom textarea", "What is 3 plus 4? Give the number.", then_click=".embiggen-use",
             expect="notice", says="reference answer"),
        Step("fill", ".embiggen-reference input", "7", then_click=".embiggen-use"),
    ],
}

#: Text that means something went wrong, wherever it shows.
ERROR_TEXT = ("Error displaying widget", "Traceback (most recent call last)", "model not found")


class WidgetCheckFailed(AssertionError):
    pass


def find_chromium() -> str | None:
    """$EMBIGGEN_CHROMIUM if set (and only it), else Debian's Chromium."""
    if os.environ.get("EMBIGGEN_CHROMIUM"):
        return os.environ["EMBIGGEN_CHROMIUM"] if Path(os.environ["EMBIGGEN_CHROMIUM"]).exists() else None
    for path in (*CHROMIUM_PATHS, shutil.which("chromium")):
        if path and Path(path).exists():
            return path
    return None


def missing_requirements() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python Playwright is not installed (pip install playwright)"
    if find_chromium() is None:
        return "Chromium is not installed (Debian: apt-get install -y chromium; or set EMBIGGEN_CHROMIUM)"
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "JupyterLab is not installed"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_cache(private: Path, source: Path, preset: str = "smoke") -> int:
    """Copy the `preset`'s entries of an existing cache (and the de-quantised GGUF models) into
    the private one, so that the test times the browser, not training again (nbval has just
    trained them in `make test`). The notebooks train whatever is missing. Returns the number
    of entries copied."""
    copied = 0
    if source.is_dir() and source.resolve() != private.resolve():
        for entry in [*source.glob(f"*/{preset}-*"), *source.glob("gguf/*")]:
            if entry.is_dir() and not entry.name.startswith("."):
                shutil.copytree(entry, private / entry.parent.name / entry.name, dirs_exist_ok=True)
                copied += 1
    return copied


class JupyterLab:
    """A JupyterLab server for the test: its own root folder, settings, port and environment."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = root / ".lab-settings"
        for plugin, values in {
            "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},  # every cell in the page
            "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
            # what `make lab` sets in the venv's overrides.json: widget state saved with the notebook
            "@jupyter-widgets/jupyterlab-manager/plugin": {"saveState": True},
        }.items():
            path = settings / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        # what `make lab` writes into the venv: Embiggen's server extension keeps saved widget state
        config = root / ".jupyter-config"
        config.mkdir(exist_ok=True)
        (config / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"embiggen.notebook.widget_state": True}}}))
        self.env = {**os.environ, **env, "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTER_CONFIG_DIR": str(config),
                    "JUPYTERLAB_WORKSPACES_DIR": str(root / ".lab-workspaces")}
        self.log_path = root / ".lab.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
             "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True", "--LabApp.expose_app_in_browser=True",
             f"--ServerApp.root_dir={self.root}"],
            env=self.env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(f"{self.url}/api/status", timeout=2)
                return self
            except OSError:
                time.sleep(0.3)
        self.__exit__()
        raise RuntimeError(f"JupyterLab did not start in 90 s:\n{self.log_tail()}")

    def __exit__(self, *exc):
        if self.process and self.process.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.process.pid, sig)  # the server and its kernels
                    self.process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def shutdown_kernels(self):
        sessions = json.load(urllib.request.urlopen(f"{self.url}/api/sessions"))
        for s in sessions:
            urllib.request.urlopen(urllib.request.Request(f"{self.url}/api/sessions/{s['id']}", method="DELETE"))


@dataclass
class Browser:
    """A Chromium page on the lab, collecting console errors as they come."""
    page: object
    console_errors: list[str] = field(default_factory=list)

    @classmethod
    def attach(cls, page):
        browser = cls(page)
        page.on("console", lambda m: browser.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: browser.console_errors.append(f"page error: {e}"))
        return browser


# ---- a notebook ---------------------------------------------------------------------------------
_PANEL = "(window.jupyterapp && window.jupyterapp.shell.currentWidget)"


def notebook_selector(page) -> str:
    """A CSS selector for the open notebook's cells (not those of a tab closed before)."""
    return f"[id=\"{page.evaluate(f'() => {_PANEL}.id')}\"] .jp-NotebookPanel-notebook"


def open_notebook(browser: Browser, lab: JupyterLab, name: str, timeout: float = 90):
    """Load JupyterLab afresh with `name` as its only tab and wait for its kernel. `?reset`
    empties the saved workspace first: without it JupyterLab reopens, in background tabs each
    with a kernel of its own, every notebook an earlier step had open, whose widgets' restoring
    and errors would count against this one."""
    page = browser.page
    page.goto(f"{lab.url}/lab/tree/{name}?reset")
    page.wait_for_function(
        f"() => {{ const p = {_PANEL}; return p && p.context && p.context.path.endsWith({json.dumps(name)})"
        " && p.sessionContext.session && p.sessionContext.session.kernel"
        " && p.sessionContext.session.kernel.connectionStatus === 'connected'"
        " && p.sessionContext.session.kernel.status === 'idle'; }", timeout=timeout * 1000)
    panels = page.evaluate("() => document.querySelectorAll('.jp-NotebookPanel').length")
    if panels != 1:
        raise WidgetCheckFailed(f"{name}: JupyterLab opened {panels} notebooks, not only this one")


def notebook_state(page) -> dict:
    """Per code cell: its execution count and error outputs; and the kernel's status."""
    return page.evaluate(f"""() => {{
        const p = {_PANEL};
        const cells = [];
        for (const cell of p.content.widgets) {{
            if (cell.model.type !== 'code') continue;
            const outputs = cell.model.outputs.toJSON();
            cells.push({{count: cell.model.executionCount,
                         running: cell.promptNode ? cell.promptNode.textContent.includes('*') : false,
                         errors: outputs.filter(o => o.output_type === 'error')
                                        .map(o => o.ename + ': ' + o.evalue)}});
        }}
        return {{kernel: p.sessionContext.session.kernel.status, cells}};
    }}""")


def run_all(browser: Browser, name: str, timeout: float) -> float:
    """Run All, as from the Run menu; wait until every code cell has run. Returns seconds."""
    page, start = browser.page, time.time()
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    while True:
        time.sleep(1)
        state = notebook_state(page)
        errors = [e for c in state["cells"] for e in c["errors"]]
        if errors:
            raise WidgetCheckFailed(f"{name}: a cell raised {errors[0]}")
        done = all(c["count"] is not None and not c["running"] for c in state["cells"])
        if done and state["kernel"] == "idle":
            return time.time() - start
        if time.time() - start > timeout:
            todo = sum(c["count"] is None or c["running"] for c in state["cells"])
            raise WidgetCheckFailed(f"{name}: {todo} cells had not run after {timeout:.0f} s")


def saved_view_problems(page, path: Path) -> list[str]:
    """What a notebook opened untrusted (as after a fresh clone) and not yet run shows in place
    of its saved widgets: the fallback text and snapshot for each, never the bare
    `VBox(children=(...` repr, nor a widget error."""
    from embiggen.notebook.widgets import FALLBACK_TEXT

    text = page.inner_text(notebook_selector(page))
    problems = [f"{path.name} before running shows {bad!r}" for bad in ("VBox(children", *ERROR_TEXT) if bad in text]
    saved = sum("application/vnd.jupyter.widget-view+json" in out.get("data", {}) and
                FALLBACK_TEXT in "".join(out["data"].get("text/plain", ""))
                for cell in json.loads(path.read_text())["cells"] for out in cell.get("outputs", []))
    shown = text.count(FALLBACK_TEXT)
    if shown < saved:
        problems.append(f"{path.name} before running shows the fallback of {shown} of its {saved} saved widgets")
    return problems


def saved_state_problems(path: Path) -> list[str]:
    """What the saved notebook lacks to draw its widgets again: every widget view in its outputs
    needs its model, and every model the models it refers to, in the widget state saved with
    the notebook (ipywidgets saves only the models whose kernel connection is live)."""
    from embiggen.notebook.widget_state import WIDGET_VIEW, references, widget_states

    nb = json.loads(path.read_text())
    state = widget_states(nb) or {}
    problems = []
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view and view.get("model_id") and view["model_id"] not in state:
                problems.append(f"cell {i} shows widget {view['model_id']}, whose state was not saved "
                                f"({len(state)} models saved)")
    referred = references(state) - set(state)
    if referred:
        problems.append(f"{len(referred)} models that saved widgets refer to were not saved")
    return problems


def reopened_problems(browser: Browser, lab: JupyterLab, name: str, n_widgets: int, shots: Path,
                      label: str = "reopened") -> list[str]:
    """Save the notebook, stop its kernel, close it and open it again: its widgets must be drawn
    from the state saved with it (JupyterLab's saveState, which `make lab` turns on), not left
    blank with 'model not found'."""
    page = browser.page
    page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function(f"() => !{_PANEL}.context.model.dirty", timeout=30000)
    problems = [f"{name} saved: {p}" for p in saved_state_problems(lab.root / name)]
    lab.shutdown_kernels()
    open_notebook(browser, lab, name)  # with its new kernel: the widgets' state is sought there first
    try:  # the saved state is restored after the notebook opens
        page.wait_for_function(f"() => document.querySelectorAll({json.dumps(notebook_selector(page) + ' .embiggen-widget')})"
                               f".length >= {n_widgets}", timeout=15000)
    except Exception:  # noqa: BLE001 - reported below, with what was drawn
        pass
    text = page.inner_text(notebook_selector(page))
    problems += [f"{name} reopened shows {bad!r}" for bad in ERROR_TEXT if bad in text]
    problems += [f"{name} on disk after reopening: {p}" for p in saved_state_problems(lab.root / name)]
    widgets = page.locator(f"{notebook_selector(page)} .embiggen-widget")
    drawn = widgets.count()
    if drawn:
        widgets.first.scroll_into_view_if_needed()
        widgets.first.screenshot(path=str(shots / f"{Path(name).stem}-{label}.png"))
    if drawn < n_widgets:
        problems.append(f"{name} reopened after saving draws {drawn} of its {n_widgets} widgets")
    problems += [f"{name} reopened: browser console error: {e[:300]}" for e in browser.console_errors]
    browser.console_errors.clear()
    return problems


# ---- a widget -----------------------------------------------------------------------------------
#: The parts of a widget that show results (`LiveWidget._tag` names): a step must change these,
#: not only the control it touched (a slider's readout or a text field changes by itself).
RESULTS = ".embiggen-output, .embiggen-samples-output, .embiggen-plot, .embiggen-tokens, .embiggen-message"


def _content(widget) -> str:
    """What the widget shows as results: the text and pictures of its result regions."""
    return widget.evaluate(f"""el => [...el.querySelectorAll({json.dumps(RESULTS)})]
        .map(r => r.innerText + '|' + (r.src || '') + [...r.querySelectorAll('img')].map(i => i.src).join(','))
        .join('||')""")


def _kernel_idle(page) -> bool:
    return page.evaluate(f"() => {_PANEL}.sessionContext.session.kernel.status === 'idle'")


def _settle(page, widget, before: str, timeout: float) -> str:
    """Wait until the widget shows something new and the kernel is idle; return what it shows."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.25)
        now = _content(widget)
        if now != before and _kernel_idle(page):
            time.sleep(0.5)  # the last comm messages of the callback
            return _content(widget)
    return _content(widget)


def check_widget(browser: Browser, widget, kind: str, shots: Path, label: str, timeout: float = 60,
                 steps: int | None = None) -> list[str]:
    """Take every step of `kind`'s recipe (or its first `steps`) on `widget`; return what went
    wrong (empty: nothing)."""
    page, problems = browser.page, []
    recipe = RECIPES.get(kind)
    if recipe is None:
        return [f"{label}: no browser recipe for widget class {kind}"]
    widget.scroll_into_view_if_needed()
    for i, step in enumerate(recipe[:steps], 1):
        where = f"{label} step {i} ({step.action} {step.target})"
        errors_before = len(browser.console_errors)
        before = _content(widget)
        target = widget.locator(step.target).first
        try:
            if step.action == "fill":
                target.fill(str(step.value))
                target.press("Enter" if target.evaluate("e => e.tagName") == "INPUT" else "Tab")
            elif step.action == "press":
                target.focus()
                target.press(str(step.value))
            elif step.action == "select":
                target.select_option(index=int(step.value))
            elif step.action == "click":
                target.click()
            if step.then_click:
                widget.locator(step.then_click).first.click()
        except Exception as exc:  # noqa: BLE001 - a control the learner cannot use is a failure
            problems.append(f"{where}: could not use the control: {str(exc).splitlines()[0]}")
            continue
        # a setting that waits for a button changes nothing: a moment is enough to see that it did not break
        after = _settle(page, widget, before, 1.0 if step.expect == "nothing" else timeout)
        errors = widget.locator(".embiggen-error")
        if errors.count():
            problems.append(f"{where}: the widget shows an error: {errors.first.inner_text()[:300]}")
        shown = [t for t in ERROR_TEXT if t in after]
        if shown:
            problems.append(f"{where}: the widget shows {shown[0]!r}")
        if after == before and step.expect != "nothing":
            problems.append(f"{where}: nothing visible changed in {timeout:.0f} s")
        notices = widget.locator(".embiggen-notice")
        if step.expect == "notice" and not notices.count():
            problems.append(f"{where}: no message about the input appeared")
        elif step.says and step.says not in notices.first.inner_text():
            problems.append(f"{where}: the message does not say {step.says!r}: {notices.first.inner_text()[:200]}")
        if step.expect == "change" and notices.count():
            problems.append(f"{where}: an unexpected message: {notices.first.inner_text()[:200]}")
        if len(browser.console_errors) > errors_before:
            problems.append(f"{where}: browser console error: {browser.console_errors[errors_before][:300]}")
        widget.screenshot(path=str(shots / f"{label}-{i}.png"))
    return problems


def check_notebook(browser: Browser, lab: JupyterLab, name: str, shots: Path, run_timeout: float = 240,
                   step_timeout: float = 60, reopen: int = 1, steps: int | None = None) -> dict:
    """Open `name` and check what its saved widgets show before anything runs; Run All; use
    every widget (the first `steps` steps of each recipe, or all); then `reopen` times: save,
    stop the kernel, reopen, and check that the saved widgets are drawn again (from the second
    time on, the notebook is saved as reopened, before anything runs: as JupyterLab's autosave
    would). Returns a summary: widget classes seen, seconds, and problems (an empty list when
    all is well)."""
    page = browser.page
    open_notebook(browser, lab, name)
    problems = saved_view_problems(page, lab.root / name)
    seconds = run_all(browser, name, run_timeout)
    problems += [f"{name}: browser console error while running: {e[:300]}" for e in browser.console_errors]
    browser.console_errors.clear()
    widgets = page.locator(f"{notebook_selector(page)} .embiggen-widget")
    kinds = []
    for i in range(widgets.count()):
        widget = widgets.nth(i)
        kind = next(c.removeprefix("embiggen-") for c in widget.get_attribute("class").split()
                    if c.startswith("embiggen-") and c != "embiggen-widget")
        kinds.append(kind)
        problems += check_widget(browser, widget, kind, shots, f"{Path(name).stem}-{i + 1}-{kind}", step_timeout,
                                 steps)
    text = page.inner_text(notebook_selector(page))
    problems += [f"{name}: the page shows {t!r}" for t in ERROR_TEXT if t in text]
    browser.console_errors.clear()  # each was reported by the step it followed
    for k in range(reopen):
        problems += reopened_problems(browser, lab, name, len(kinds), shots, "reopened" + (f"-{k + 1}" if k else ""))
    lab.shutdown_kernels()
    return {"notebook": name, "widgets": kinds, "run_seconds": round(seconds, 1), "problems": problems}
