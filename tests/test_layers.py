"""The library's modules import one way: no cycle among their top-level imports, each module imports
only from the layers below it (declared here, named in README), and no module but two imports the package
inside a function."""

import ast
import graphlib
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "emocircuits"
# The library's layers, bottom first: a module imports only modules of lower layers (the package's
# __init__, cli and colab sit above them all). A new module must be placed here, and README's layout table
# must name it.
LAYERS = (
    ("cache", "lexical", "page", "registry", "sites", "stats", "tables"),
    ("bundled", "contributions", "datasets", "interventions", "profiling", "readout", "results", "vectors"),
    ("activations", "circuits", "coherence", "embeddings", "models", "protocol", "sources", "transcoders"),
    ("attribution", "causal", "choosing", "corpora", "fidelity", "generation", "published", "records", "staging",
     "training"),
    ("book", "classifiers", "emotion_acts", "features", "personas", "plots", "probes", "steering"),
    ("clamping", "judges"),
)
TOP = ("__init__", "cli", "colab")
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


def test_every_module_imports_only_from_the_layers_below_it():
    top, _ = _graph()
    layer_of = {m: i for i, names in enumerate(LAYERS) for m in names}
    unplaced = sorted(set(top) - set(layer_of) - set(TOP))
    assert not unplaced, f"modules {unplaced} have no layer in tests/test_layers.py: LAYERS"
    _, inner = _graph()
    for name, deps in top.items():
        if name in TOP:
            continue
        deps = deps | inner[name]  # an import inside a function obeys the layers too
        upward = sorted(d for d in deps if d in top and layer_of.get(d, len(LAYERS)) >= layer_of[name])
        assert not upward, f"{name}.py (layer {layer_of[name]}) imports {upward}, of its own layer or above"


def test_the_readme_layout_names_every_module():
    readme = (LIB.parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `lib/emocircuits/`"))
    missing = sorted(m for names in LAYERS for m in names if f"`{m}`" not in row)
    assert not missing, f"README's layout table does not name {missing}"


def test_the_analysis_modules_import_nothing_of_the_package_inside_functions():
    top, inner = _graph()
    for name in NO_INNER_IMPORTS:
        assert not inner[name], f"{name}.py imports {sorted(inner[name])} inside a function"


def test_importing_the_package_loads_no_model_code_until_a_name_asks_for_it():
    """Every chapter's kernel imports the package first (to note the data files it reads): that import stays
    light, and the package's names still resolve, each from its own module."""
    import subprocess
    import sys

    code = ("import sys, emocircuits\n"
            "assert 'torch' not in sys.modules, 'import emocircuits loaded torch'\n"
            "from emocircuits import DEFAULT_MODEL, load_model\n"
            "from emocircuits.models import load_model as home\n"
            "assert load_model is home and 'torch' in sys.modules and DEFAULT_MODEL\n"
            "assert set(emocircuits.__all__) <= set(dir(emocircuits))\n"
            "try:\n    emocircuits.no_such_name\nexcept AttributeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=LIB.parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "module 'emocircuits' has no attribute 'no_such_name'"
