"""The package's shape, read from its folders: data flows one way, and each file's imports say what it needs.

A layer is a folder of the package (`embiggen/methods/`) or one file at its top (`embiggen/chain.py`), and
LAYERS lists them bottom to top, as ARCHITECTURE.md draws them. A module may import its own folder and the
layers below it, never one above: a method never imports the chain, the chain never imports the report. So a
new file's place in the layering is the folder it is saved in.
"""

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "embiggen"

#: bottom to top: a folder (several files) or a file at the top of the package
LAYERS = [
    "__init__",                                  # the version
    "errors",                                    # UserError and printable: what the user is told (no torch)
    "utils", "presets",                          # settings: files, seeds, devices; the presets are data
    "data",                                      # the embedded world and every data split
    "lm",                                        # the language model: tokenizer, model, decoding, training loop
    "judging",                                   # evaluation, the gold labeler, preference pairs
    "methods",                                   # pretrain, SFT, reward model, PPO, DPO, ... one file each
    "chain",                                     # each stage trained once, cached, handed to the next
    "experiments",                               # sweeps, ablations, held-out measurements
    "report",                                    # the report card: a headline in words, every figure, targets
    "pipeline", "commands", "cli", "__main__",   # the stage registry, `embiggen run`, the commands, their parser,
                                                 # the console script
    "notebook",                                  # what the notebooks show: set-up, tables, plots, widgets
]
#: third-party packages a module may import inside a function because they are optional
OPTIONAL_DEPENDENCIES: set[str] = {"llama_cpp"}  # llama-cpp-python, timed in notebook 6 where it happens to be installed
#: the two imports of the package inside a function: the command line parses its arguments before the commands
#: load torch and transformers (seconds), so `embiggen --help` and a mistyped flag answer at once; and the console
#: script imports the command line inside its handling of Ctrl-C, so an interrupt while it loads is one line
DEFERRED_IMPORTS = {("cli.main", "from embiggen.commands import dispatch"),
                    ("__main__.main", "from embiggen.cli import main as cli_main")}


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by its dotted name below `embiggen` ("methods.ppo", "chain", "__init__")."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        found[".".join(parts)] = path
    return found


def layer_of(module: str) -> str:
    """A module's layer: its folder, or itself at the top of the package."""
    return module.split(".")[0]


def internal_targets(node: ast.Import | ast.ImportFrom, names: set[str]) -> list[str]:
    """The package modules an import statement reads, as dotted names below `embiggen`."""
    if isinstance(node, ast.Import):
        return [alias.name.removeprefix("embiggen.") for alias in node.names if alias.name.startswith("embiggen.")]
    if node.level or not (node.module == "embiggen" or (node.module or "").startswith("embiggen.")):
        return []
    module = node.module.removeprefix("embiggen").removeprefix(".")  # "" for `from embiggen import x`
    prefix = module + "." if module else ""
    submodules = [prefix + alias.name for alias in node.names if prefix + alias.name in names]
    return submodules or [module or "__init__"]


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    names = set(modules(package))
    return {name: {target for node in ast.walk(ast.parse(path.read_text()))  # imports in functions count too
                   if isinstance(node, (ast.Import, ast.ImportFrom)) for target in internal_targets(node, names)}
            for name, path in modules(package).items()}


def upward_imports(package: Path = PACKAGE) -> list[str]:
    """Imports of a module in a layer above the importer's (a module no layer holds counts as above all)."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return [f"{module} -> {target}" for module, targets in import_graph(package).items() for target in targets
            if rank.get(layer_of(target), len(LAYERS)) > rank[layer_of(module)]]


def import_circle(package: Path = PACKAGE) -> list[str] | None:
    graph, state = import_graph(package), {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        if state.get(module) == "open":
            return path + [module]
        if state.get(module) == "done":
            return None
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            circle = visit(target, path + [module])
            if circle:
                return circle
        state[module] = "done"
        return None

    for module in graph:
        circle = visit(module, [])
        if circle:
            return circle
    return None


def imports_inside_functions(package: Path = PACKAGE) -> list[str]:
    inside = []
    for name, path in modules(package).items():
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    roots = {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom):
                    roots = {"embiggen" if node.level else (node.module or "").split(".")[0]}
                else:
                    continue
                if not roots <= OPTIONAL_DEPENDENCIES and (f"{name}.{function.name}", ast.unparse(node)) \
                        not in DEFERRED_IMPORTS:
                    inside.append(f"{name}.{function.name}: {ast.unparse(node)}")
    return inside


def test_every_module_is_in_a_layer():
    layers = {layer_of(name) for name in modules()}
    assert layers == set(LAYERS), (f"not in LAYERS: {sorted(layers - set(LAYERS))}; no such folder or file: "
                                   f"{sorted(set(LAYERS) - layers)} (add a new top-level file or folder to LAYERS "
                                   "here and to ARCHITECTURE.md; a file inside a folder needs nothing)")


def test_folders_are_one_level_deep_and_each_init_says_what_its_layer_is():
    for path in PACKAGE.rglob("*.py"):
        assert len(path.relative_to(PACKAGE).parts) <= 2, f"{path}: one folder per layer, no folders inside them"
    for folder in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"):
        init = folder / "__init__.py"
        assert init.exists(), f"{folder.name}/ has no __init__.py"
        tree = ast.parse(init.read_text())
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr) and \
            isinstance(tree.body[0].value, ast.Constant) and isinstance(tree.body[0].value.value, str), \
            f"{folder.name}/__init__.py: only a docstring saying what the layer is (no re-exports)"


def test_imports_run_one_way():
    assert not upward_imports(), f"imports that run up the layers: {upward_imports()}"


def test_the_import_graph_has_no_circle():
    circle = import_circle()
    assert circle is None, f"import circle: {' -> '.join(circle or [])}"


def test_imports_sit_at_the_top_of_each_file():
    assert not imports_inside_functions(), f"imports inside functions: {imports_inside_functions()}"


def test_one_way_to_import_each_thing():
    """`from embiggen.methods.ppo import PPOTrainer`: absolute, from the module that defines it; no relative
    imports, no `import embiggen.x`, no `import *`, no module imported by name from its folder."""
    names, odd = set(modules()), []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("embiggen")):
                module = (node.module or "").removeprefix("embiggen").removeprefix(".")
                if node.level or any(a.name == "*" for a in node.names) or (module not in names and module) \
                        or any(f"{module}.{a.name}".lstrip(".") in names for a in node.names):
                    odd.append(f"{name}: {ast.unparse(node)}")
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "embiggen" for a in node.names):
                odd.append(f"{name}: {ast.unparse(node)}")
    assert not odd, f"imports not of the form 'from embiggen.<folder>.<module> import <name>': {odd}"


def _top_level_names(path: Path) -> set[str]:
    """What a module defines itself: functions, classes and assigned names (not what it imports)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def imports_not_from_where_defined(source: str, package: Path = PACKAGE) -> list[str]:
    """`from embiggen.x.y import name` where module x.y does not define `name` itself (it only imports it
    from elsewhere: a re-export), or where x.y is no module of the package."""
    names, bad = modules(package), []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("embiggen")):
            continue
        module = node.module.removeprefix("embiggen").removeprefix(".") or "__init__"
        path = names.get(module) or names.get(module + ".__init__")
        if path is None:
            bad.append(f"{ast.unparse(node)} (no module {node.module})")
            continue
        prefix = "" if module == "__init__" else module + "."  # its submodules count as defined there
        defined = _top_level_names(path) | {name[len(prefix):].split(".")[0] for name in names if name.startswith(prefix)}
        bad += [f"from {node.module} import {a.name} (not defined there)" for a in node.names if a.name not in defined]
    return bad


def _code_everywhere() -> dict[str, str]:
    """The package, the tests, the benchmarks and every notebook's code cells, by where they are."""
    code = {str(p.relative_to(ROOT)): p.read_text()
            for p in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]}
    for notebook in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        for i, cell in enumerate(json.loads(notebook.read_text())["cells"]):
            if cell["cell_type"] == "code":
                lines = "".join(cell["source"]).splitlines()
                code[f"{notebook.relative_to(ROOT)} cell {i}"] = "\n".join(
                    line for line in lines if not line.lstrip().startswith(("%", "!")))  # IPython magics
    return code


def test_everything_is_imported_from_the_module_that_defines_it():
    bad = {where: found for where, source in _code_everywhere().items()
           if (found := imports_not_from_where_defined(source))}
    assert not bad, f"imports of a name from a module that does not define it (import it from where it is): {bad}"


# ---------------------------------------------------------------------------------------
# The checks themselves, on a copy of the package with something planted in it
# ---------------------------------------------------------------------------------------
@pytest.fixture
def package_copy(tmp_path) -> Path:
    copy = tmp_path / "embiggen"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _plant(path: Path, line: str) -> None:
    text = path.read_text() if path.exists() else '"""A planted module."""\n'
    head, _, tail = text.partition("\nfrom ")
    path.write_text(f"{head}\n{line}\nfrom {tail}" if tail else f"{text}\n{line}\n")


def test_the_check_sees_a_planted_upward_import(package_copy):
    assert upward_imports(package_copy) == []
    _plant(package_copy / "data" / "world.py", "from embiggen.methods.ppo import PPOTrainer")
    assert upward_imports(package_copy) == ["data.world -> methods.ppo"]


def test_a_new_file_is_placed_by_the_folder_it_is_saved_in(package_copy):
    _plant(package_copy / "methods" / "grpo.py", "from embiggen.chain import train_or_load_sft")
    _plant(package_copy / "methods" / "grpo2.py", "from embiggen.methods.ppo import clipped_policy_loss")
    assert upward_imports(package_copy) == ["methods.grpo -> chain"]  # the second imports its own folder: fine


def test_the_check_sees_a_planted_circle_and_an_import_inside_a_function(package_copy):
    assert import_circle(package_copy) is None and imports_inside_functions(package_copy) == []
    _plant(package_copy / "lm" / "tokenizer.py", "from embiggen.lm.generate import generate")
    assert import_circle(package_copy) is not None
    with open(package_copy / "utils.py", "a") as f:
        f.write("\n\ndef planted():\n    from embiggen.presets import get_preset\n    return get_preset\n")
    assert imports_inside_functions(package_copy) == ["utils.planted: from embiggen.presets import get_preset"]


def test_only_the_command_lines_deferred_import_is_allowed_and_it_still_runs_one_way(package_copy):
    with open(package_copy / "cli.py", "a") as f:  # a second import inside the same function is not the allowed one
        f.write("\n\ndef main2():\n    from embiggen.commands import COMMANDS\n    return COMMANDS\n")
    assert imports_inside_functions(package_copy) == ["cli.main2: from embiggen.commands import COMMANDS"]
    with open(package_copy / "presets.py", "a") as f:  # an import inside a function is in the layering too
        f.write("\n\ndef planted():\n    from embiggen.pipeline import STAGES\n    return STAGES\n")
    assert upward_imports(package_copy) == ["presets -> pipeline"]


def test_the_command_line_parses_and_answers_help_without_torch():
    """`embiggen --help` and a parse error come before torch and transformers load (seconds on a laptop)."""
    code = ("import sys\nfrom embiggen.cli import main\n"
            "for argv in (['--help'], ['run', '--help'], ['chat', '--bogus']):\n"
            "    try:\n        main(argv)\n    except SystemExit as exit:\n        assert exit.code in (0, 2), exit.code\n"
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
    assert "unrecognized arguments: --bogus" in done.stderr


def test_the_parsers_stage_names_are_the_pipelines():
    from embiggen.pipeline import STAGES
    from embiggen.presets import LANGUAGE_MODELS, STAGE_NAMES
    assert STAGE_NAMES == tuple(STAGES)
    assert LANGUAGE_MODELS == ("base", "sft", "ppo", "dpo", "simpo", "orpo", "kto", "tools", "grpo")


def test_the_check_sees_a_re_exported_name():
    assert imports_not_from_where_defined("from embiggen.methods.tools import encode_tool_example") == []
    assert imports_not_from_where_defined("from embiggen.methods.tools import TOOLS\nfrom embiggen.ppo import gae") == [
        "from embiggen.methods.tools import TOOLS (not defined there)", "from embiggen.ppo import gae (no module embiggen.ppo)"]


def test_the_graph_reader_reads_every_form_of_import():
    names = set(modules())
    read = [t for line in ["from embiggen.chain import train_or_load_sft", "from embiggen import __version__",
                           "import embiggen.data.world", "from embiggen.methods import ppo", "import torch"]
            for t in internal_targets(ast.parse(line).body[0], names)]
    assert read == ["chain", "__init__", "data.world", "methods.ppo"]


# ---------------------------------------------------------------------------------------
# The documents name the package as it is
# ---------------------------------------------------------------------------------------
DOTTED = re.compile(r"\bembiggen((?:\.[A-Za-z_]\w*)+)")
PATH = re.compile(r"\bembiggen/([\w/]+\.py)\b")


def _defined_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


def dangling_references(text: str) -> list[str]:
    """The `embiggen.x.y[.name]` and `embiggen/x/y.py` a text names that the package does not have (benchmarks,
    which CI does not run, are read here too)."""
    names, bad = modules(), []
    for match in DOTTED.finditer(text):
        parts = match.group(1).lstrip(".").split(".")
        if parts[-1] in {"json", "ipynb", "egg"}:  # a file name, as jupyter_server_config.d/embiggen.json
            continue
        for cut in range(len(parts), 0, -1):  # the longest prefix that is a module (or a folder)
            module = ".".join(parts[:cut])
            if module in names or module + ".__init__" in names:
                rest = parts[cut:]
                path = names.get(module) or names[module + ".__init__"]
                if rest and rest[0] not in _defined_names(path):
                    bad.append(match.group(0))
                break
        else:
            bad.append(match.group(0))
    bad += [f"embiggen/{p}" for p in PATH.findall(text) if not (PACKAGE / p).exists()]
    return bad


def _documents() -> dict[str, str]:
    docs = {p.name: p.read_text() for p in [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "Makefile"]}
    docs.update({str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "notebooks").rglob("*.ipynb"))})
    docs.update({str(p.relative_to(ROOT)): p.read_text() for p in modules().values()})
    docs.update({str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "benchmarks").glob("*.py"))})
    return docs


def test_the_documents_name_no_module_the_package_does_not_have():
    bad = {name: refs for name, text in _documents().items() if (refs := dangling_references(text))}
    assert not bad, f"names of modules or paths that do not exist: {bad}"


def test_the_document_check_sees_an_old_flat_name():
    assert dangling_references("see `embiggen.methods.ppo.gae` and embiggen/methods/ppo.py") == []
    assert dangling_references("`embiggen.ppo.gae`, embiggen/ppo.py, embiggen.methods.ppo.no_such") == \
        ["embiggen.ppo.gae", "embiggen.methods.ppo.no_such", "embiggen/ppo.py"]


# ---------------------------------------------------------------------------------------
# A preset is resolved once, at the edges
# ---------------------------------------------------------------------------------------
EDGES = {"commands", "notebook.session"}  # where a run starts: the commands of the command line, a notebook's first cell


def preset_lookups(package: Path = PACKAGE) -> list[str]:
    """The modules, other than the edges and presets.py itself, that call `get_preset`."""
    return sorted(name for name, path in modules(package).items() if name not in EDGES | {"presets"}
                  and any(isinstance(node, ast.Call) and getattr(node.func, "id", None) == "get_preset"
                          for node in ast.walk(ast.parse(path.read_text()))))


def test_a_preset_is_looked_up_by_name_only_at_the_edges(package_copy):
    assert preset_lookups() == []
    _plant(package_copy / "chain.py", "from embiggen.presets import get_preset\nLAPTOP = get_preset('laptop')")
    assert preset_lookups(package_copy) == ["chain"]


def test_a_name_handed_where_a_preset_belongs_is_one_clear_error():
    from embiggen.chain import train_or_load_sft
    from embiggen.data.splits import data_splits
    from embiggen.errors import UserError

    for call in (lambda: train_or_load_sft("laptop"), lambda: data_splits("smoke")):
        with pytest.raises(UserError, match=r"expected a Preset, got '(laptop|smoke)'.*get_preset"):
            call()
