import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_and_pyproject_name_the_same_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {_name(r): r for r in project["dependencies"] + extras["dev"] + extras["real-model"]}
    env_lines = (ROOT / "environment.yml").read_text().splitlines()
    start = env_lines.index("  - pip:")
    pip_reqs = [l.strip()[2:] for l in env_lines[start + 1:] if l.strip().startswith("- ")]
    assert {_name(r): r for r in pip_reqs} == wanted


def test_make_lab_starts_jupyterlab_as_root_too(tmp_path):
    """JupyterLab refuses to start as root (a container, a cloud VM) unless told to: `make lab` adds --allow-root
    then, and says so. The command `make lab` runs (read with `make -n`) starts a JupyterLab that serves, and stops."""
    import os
    import shlex
    import subprocess
    import time

    dry = subprocess.run(["make", "-s", "-n", "lab", "LAB_ARGS=--no-browser --port=18931 --ServerApp.port_retries=50"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip().splitlines()
    command, note = dry[-1], " ".join(dry)
    root = os.geteuid() == 0
    assert ("--allow-root" in command) == root and ("starts with --allow-root" in note) == root
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        lab = subprocess.Popen(shlex.split(command), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and lab.poll() is None and "is running at" not in log.read_text():
            time.sleep(0.5)
        assert lab.poll() is None and "is running at" in log.read_text(), log.read_text()[-2000:]
    finally:
        lab.terminate()
        lab.wait(timeout=30)


def test_notebooks_have_python3_kernel_and_outputs():
    import json

    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for path in notebooks:
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", path
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(c["execution_count"] is not None for c in code), f"{path} has unexecuted cells"


def test_make_lab_and_the_browser_test_save_widget_state_alike():
    """`make lab` writes JupyterLab's overrides so that a saved notebook reopens with its widgets
    drawn; the browser test's private JupyterLab has the same setting (and checks the reopening)."""
    import json
    makefile = (ROOT / "Makefile").read_text()
    line = next(l for l in makefile.splitlines() if "jupyterlab-manager:plugin" in l)
    overrides = json.loads(line.split("'")[1])
    assert overrides == {"@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": True}}
    assert re.search(r"^lab: .*\$\(LAB_SETTINGS\)", makefile, re.M) and re.search(r"^test: .*\$\(LAB_SETTINGS\)",
                                                                                   makefile, re.M)
    harness = (ROOT / "tests" / "browser" / "harness.py").read_text()
    assert '"@jupyter-widgets/jupyterlab-manager/plugin": {"saveState": True}' in harness
    ci = (ROOT / ".ci" / "run").read_text()
    assert "EMBIGGEN_REQUIRE_BROWSER=1" in ci and "make test" in ci


def test_make_lab_and_the_browser_test_enable_the_widget_state_extension_alike():
    """`make lab` (through $(LAB_SETTINGS)) writes the server config that enables
    `embiggen.notebook.widget_state` into the venv; the browser test's JupyterLab enables it the same way,
    and the module is a server extension Jupyter can load."""
    import json

    import embiggen.notebook.widget_state as extension
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^SERVER_CONFIG := \$\(VENV\)/etc/jupyter/jupyter_server_config\.d/embiggen\.json$", makefile, re.M)
    assert re.search(r"^\$\(LAB_SETTINGS\): .*\$\(SERVER_CONFIG\)", makefile, re.M)
    line = next(l for l in makefile.splitlines() if "jpserver_extensions" in l)
    config = {"ServerApp": {"jpserver_extensions": {"embiggen.notebook.widget_state": True}}}
    assert json.loads(line.split("'")[1]) == config
    assert 'json.dumps({"ServerApp": {"jpserver_extensions": {"embiggen.notebook.widget_state": True}}})' in (
        ROOT / "tests" / "browser" / "harness.py").read_text()
    assert extension._jupyter_server_extension_points() == [{"module": "embiggen.notebook.widget_state"}]
    hooks = []
    extension._load_jupyter_server_extension(
        type("App", (), {"contents_manager": type("CM", (), {"register_pre_save_hook": hooks.append})()})())
    assert hooks == [extension.keep_widget_state]


def test_without_a_browser_the_browser_tests_skip_saying_why_unless_ci_requires_them(tmp_path):
    import os
    import subprocess
    import sys
    env = {**os.environ, "EMBIGGEN_CHROMIUM": str(tmp_path / "no-chromium"), "EMBIGGEN_REQUIRE_BROWSER": "0"}
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(ROOT / "tests" / "browser"),
               "-k", "recipe"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "SKIPPING the browser tests" in out.stdout and "Chromium is not installed" in out.stdout
    out = subprocess.run(command, env={**env, "EMBIGGEN_REQUIRE_BROWSER": "1"}, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "browser tests required" in out.stdout + out.stderr


def test_a_notebook_runs_from_the_wheel_outside_the_checkout(tmp_path):
    """The route without the repository (a hosted notebook): build the wheel, install it into a
    fresh virtual environment (its dependencies read from this one's, nothing downloaded), copy
    notebook 1 into an empty folder and run it there under nbval with the smoke preset. No path
    in the package or the notebook may assume the checkout."""
    import os
    import site
    import subprocess
    import sys
    import venv

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "wheel"), str(root)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("embiggen-*.whl")
    venv.create(tmp_path / "env", with_pip=False)
    python = tmp_path / "env" / "bin" / "python"
    packages = Path(subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies: this environment's site-packages as a plain path entry (its .pth files, among them
    # the editable install of the checkout, are not read from there)
    (packages / "dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True)
    folder = tmp_path / "hosted"
    folder.mkdir()
    notebook = folder / "01_language_model.ipynb"
    notebook.write_text((root / "notebooks" / "01_language_model.ipynb").read_text())
    env = {**os.environ, "EMBIGGEN_PRESET": "smoke", "EMBIGGEN_CACHE": str(tmp_path / "cache"),
           "EMBIGGEN_THREADS": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    where = subprocess.run([str(python), "-c", "import embiggen; print(embiggen.__file__)"], cwd=folder, env=env,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(packages)), where  # the wheel's copy, not the checkout's
    run = subprocess.run([str(python), "-m", "pytest", "-q", "--nbval-lax", "--nbval-current-env", "-p",
                          "no:cacheprovider", notebook.name], cwd=folder, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert not (folder / "embiggen").exists() and "passed" in run.stdout
