"""The package's shape, read from its source: data flows one way, and each file's imports say what it needs.

The layers below are the ones ARCHITECTURE.md draws. A module may import only modules of
the package listed before it, so the import graph has no circle and nothing imports back
down the flow (a method never imports the chain, the chain never imports the report).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "embiggen"

#: bottom to top
LAYERS = [
    "__init__", "utils", "presets",                                 # settings
    "world", "tasks", "toolbox", "mixture", "splits",               # the embedded world and every data split
    "tokenizer", "model", "generate", "evaluate", "labeler",         # models, decoding, measuring, the labeler
    "preferences", "training",
    "pretrain", "sft", "reward", "ppo", "dpo", "best_of_n",          # the methods, one file each
    "tools", "baseline", "inference",
    "chain",                                                         # each stage trained once, cached
    "experiments",                                                   # sweeps, ablations, held-out measurements
    "pipeline", "cli",                                               # the stage registry, `embiggen run`, the CLI
    "plots", "widgets", "notebook",                                  # what the notebooks show
    "widget_state",                                                  # JupyterLab keeps saved widgets drawable
]
#: third-party packages a module may import inside a function because they are optional
OPTIONAL_DEPENDENCIES: set[str] = {"llama_cpp"}  # llama-cpp-python, timed in notebook 5 where it happens to be installed


def modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text()) for path in sorted(PACKAGE.glob("*.py"))}


def internal_target(node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package modules an import statement reads ('from .x import y', 'from . import x')."""
    if isinstance(node, ast.ImportFrom):
        if node.level == 0:
            return [node.module.split(".")[1]] if (node.module or "").startswith("embiggen.") else []
        if node.module:
            return [node.module.split(".")[0]]
        return [alias.name if alias.name in LAYERS else "__init__" for alias in node.names]
    return [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("embiggen.")]


def import_graph() -> dict[str, set[str]]:
    return {name: {target for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                   for target in internal_target(node)} for name, tree in modules().items()}


def test_every_module_has_a_layer():
    assert set(modules()) == set(LAYERS), "add the new module to LAYERS here and to ARCHITECTURE.md"


def test_imports_run_one_way():
    rank = {name: i for i, name in enumerate(LAYERS)}
    backwards = [f"{module} -> {target}" for module, targets in import_graph().items() for target in targets
                 if rank[target] >= rank[module]]
    assert not backwards, f"imports that run back down the flow: {backwards}"


def test_the_import_graph_has_no_circle():
    graph, state = import_graph(), {}

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == "open":
            pytest.fail(f"import circle: {' -> '.join(path + [module])}")
        if state.get(module) == "done":
            return
        state[module] = "open"
        for target in sorted(graph[module]):
            visit(target, path + [module])
        state[module] = "done"

    for module in graph:
        visit(module, [])


def test_imports_sit_at_the_top_of_each_file():
    inside = []
    for name, tree in modules().items():
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    roots = {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom):
                    roots = {"embiggen" if node.level else (node.module or "").split(".")[0]}
                else:
                    continue
                if not roots <= OPTIONAL_DEPENDENCIES:
                    inside.append(f"{name}.{function.name}: {ast.unparse(node)}")
    assert not inside, f"imports inside functions: {inside}"


def test_the_check_sees_a_backward_import():
    """The graph reader itself: a method importing the chain would be caught."""
    tree = ast.parse("from .chain import train_or_load_sft\nfrom . import utils\nimport embiggen.world as w\n")
    targets = [t for node in tree.body for t in internal_target(node)]
    assert targets == ["chain", "utils", "world"]
