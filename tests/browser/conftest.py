"""Fixtures for the browser test: one JupyterLab server and one Chromium for the whole session,
on a temporary copy of the notebooks with the `smoke` preset and a private cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from harness import NOTEBOOKS, Browser, JupyterLab, find_chromium, missing_requirements, seed_cache

from embiggen.utils import cache_root

_SHOTS: list[Path] = []


def pytest_collection_modifyitems(config, items):
    """Without Playwright or Chromium the browser tests are skipped, saying why, unless
    $EMBIGGEN_REQUIRE_BROWSER is set (CI sets it): then they fail."""
    why = missing_requirements()
    if why is None:
        return
    if os.environ.get("EMBIGGEN_REQUIRE_BROWSER") == "1":
        pytest.exit(f"browser tests required ($EMBIGGEN_REQUIRE_BROWSER) but {why}", returncode=1)
    print(f"\nSKIPPING the browser tests of the widgets: {why}. `make test` installs both where it can.")
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.skip(reason=why))


def pytest_terminal_summary(terminalreporter):
    for path in _SHOTS:
        terminalreporter.write_line(f"screenshots of every widget after each step: {path}")


@pytest.fixture(scope="session")
def lab_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    for nb in NOTEBOOKS.glob("*.ipynb"):
        shutil.copy(nb, root / nb.name)
    return root


@pytest.fixture(scope="session")
def shots():
    path = Path(os.environ.get("EMBIGGEN_SCREENSHOTS") or Path.cwd() / "runs" / "browser-screenshots").resolve()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    _SHOTS.append(path)
    return path


@pytest.fixture(scope="session")
def lab(lab_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    copied = seed_cache(cache, cache_root())
    print(f"\nprivate cache {cache}: {copied} smoke entries copied from {cache_root()}")
    threads = os.environ.get("EMBIGGEN_THREADS", "2")
    env = {"EMBIGGEN_PRESET": "smoke", "EMBIGGEN_CACHE": str(cache), "EMBIGGEN_THREADS": threads,
           "OMP_NUM_THREADS": threads}
    with JupyterLab(lab_root, env) as server:
        yield server


@pytest.fixture(scope="session")
def browser(lab):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox"])
        try:
            page = chromium.new_page(viewport={"width": 1400, "height": 1000})
            yield Browser.attach(page)
        finally:
            chromium.close()
