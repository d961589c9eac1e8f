"""A committed notebook exported to HTML (`jupyter nbconvert --to html`, as nbviewer and course sites do) and
opened in Chromium with no network: the widget library cannot be fetched, so no widget is drawn, and each must show
its fallback text and its snapshot instead of a blank space; where a widget is drawn, its snapshot steps aside."""

from __future__ import annotations

import json
import subprocess
import sys

from harness import NOTEBOOKS

from embiggen.notebook.widget_state import WIDGET_VIEW
from embiggen.notebook.widgets import FALLBACK_TEXT

EXPORTED = "03_alignment_tuning.ipynb"  # three widgets; every notebook is slimmed the same way


def test_an_exported_notebook_shows_every_widgets_snapshot_offline(browser, tmp_path):
    path = NOTEBOOKS / EXPORTED
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--output-dir", str(tmp_path),
                    str(path)], check=True, capture_output=True)
    html = tmp_path / path.with_suffix(".html").name
    widgets = sum(WIDGET_VIEW in out.get("data", {}) for cell in json.loads(path.read_text())["cells"]
                  for out in cell.get("outputs", []))
    assert widgets >= 2
    context = browser.page.context.browser.new_context(offline=True)
    try:
        page = context.new_page()
        page.goto(html.as_uri(), wait_until="load")
        snapshots = page.locator(".embiggen-snapshot")
        assert snapshots.count() == widgets
        for i in range(widgets):
            assert snapshots.nth(i).is_visible(), f"widget {i + 1} of {widgets} shows nothing offline"
            assert FALLBACK_TEXT in snapshots.nth(i).inner_text()
        page.screenshot(path=str(tmp_path / "offline.png"), full_page=False)
        # where the widget library draws a widget (online, or in JupyterLab), its snapshot hides
        page.evaluate("""() => document.querySelector('.jupyter-widgets')
                        .insertAdjacentHTML('beforeend', '<div class="embiggen-widget">drawn</div>')""")
        assert not snapshots.nth(0).is_visible() and snapshots.nth(1).is_visible()
    finally:
        context.close()
