"""The library's modules import one way: no cycle among their top-level imports, the lower layers
(sites -> interventions -> activations) import no higher one, and the analysis modules import no package
module inside a function."""

import ast
import graphlib
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "emocircuits"
LOWER_LAYERS = ("sites", "interventions", "activations", "profiling", "cache")
# every module but two imports the package at its top: cli's lazy imports keep `emocircuits --help` quick, and
# colab's set-up runs on Colab before the package's dependencies are installed
INNER_IMPORTS_ALLOWED = ("cli", "colab")
NO_INNER_IMPORTS = tuple(sorted(p.stem for p in LIB.glob("*.py") if p.stem not in INNER_IMPORTS_ALLOWED))


def _package_imports(node: ast.AST) -> set[str]:
    """Package modules a statement imports (``from .x import y``, ``from . import x``)."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and n.level == 1:
            if n.module:
                out.add(n.module.split(".")[0])
            else:
                out.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and (n.module or "").startswith("emocircuits."):
            out.add(n.module.split(".")[1])
    return out


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    top, inner = {}, {}
    for path in sorted(LIB.glob("*.py")):
        tree = ast.parse(path.read_text())
        name = path.stem
        top[name] = set().union(*(_package_imports(s) for s in tree.body
                                  if isinstance(s, (ast.Import, ast.ImportFrom, ast.If, ast.Try))))
        inner[name] = set().union(*(_package_imports(s) for s in tree.body
                                    if isinstance(s, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))))
        top[name].discard(name)
    return top, inner


def test_top_level_imports_have_no_cycle():
    top, _ = _graph()
    known = set(top)
    graph = {m: {d for d in deps if d in known} for m, deps in top.items()}
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle among the library's modules: {' -> '.join(err.args[1])}")
    assert order.index("sites") < order.index("interventions") < order.index("activations") < order.index("steering")


def test_the_analysis_modules_import_nothing_of_the_package_inside_functions():
    top, inner = _graph()
    for name in NO_INNER_IMPORTS:
        assert not inner[name], f"{name}.py imports {sorted(inner[name])} inside a function"
    # a lower layer never imports a higher one, even at the top
    for i, name in enumerate(LOWER_LAYERS[:3]):
        higher = {"steering", "circuits", "attribution", "transcoders", "judges", "probes", "book", "cli"}
        assert not (top[name] & higher), f"{name}.py imports {sorted(top[name] & higher)}"
