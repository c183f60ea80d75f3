"""The chapters' shared opening, written once here and put into every chapter by ``make sync``.

Every ``notebooks/NN_slug.py`` opens the same way: a cell that, on Colab only, clones the repository and
installs it (:data:`COLAB_CELL`); after the chapter's title and objectives, the GPU note
(:data:`GPU_NOTE_CELL`); then the parameters cell, whose first lines are the parameters every chapter
takes (:data:`COMMON_PARAMETERS`) and whose other lines are the chapter's own. :func:`with_opening` gives a
chapter's source with those parts as written here and the rest as it was; ``python -m emocircuits.sources``
(``make sync``) rewrites every chapter that differs, and a test fails when one does.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from .cache import atomic_write_text
from .datasets import ROOT

COLAB_CELL = '''# %% tags=["remove-cell"]
# On Colab only (elsewhere this does nothing): clone the book's repository,
# install it with its bundled models, and work from the clone.
import sys

if "google.colab" in sys.modules:  # pragma: no cover
    import runpy, subprocess
    subprocess.run("test -d /content/emocircuits || git clone -q --depth 1 --branch main "
                   "https://github.com/emocircuits/emocircuits /content/emocircuits", shell=True, check=True)
    runpy.run_path("/content/emocircuits/lib/emocircuits/colab.py", run_name="__main__")
'''

GPU_NOTE_CELL = '''# %% [markdown]
# ```{include} ../book/_gpu.md
# ```
'''

COMMON_PARAMETERS = '''MODEL = "smollm2-135m"  # any name from `emocircuits models`
QUICK = False  # True: fewer items, for the test suite
FULL = False  # True: the largest samples (for a GPU; hours on a CPU)
SEED = 0
'''

_COMMON_NAMES = re.compile(r"^(MODEL|QUICK|FULL|SEED) = ")
_CELL = re.compile(r"^# %%", re.M)


class SourceError(ValueError):
    """A chapter source lacks a part of the shared opening, so it cannot be written in."""


def _cells(text: str) -> tuple[str, list[str]]:
    """The jupytext header and the cells, each cell's text from its ``# %%`` line on."""
    starts = [m.start() for m in _CELL.finditer(text)]
    if not starts:
        raise SourceError("no '# %%' cell marker: expected a jupytext percent-format chapter")
    return text[:starts[0]], [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]


def _with_tail(new: str, old: str) -> str:
    """``new`` ending in as many newlines as ``old`` did (the blank lines before the next cell)."""
    return new.rstrip("\n") + "\n" * max(1, len(old) - len(old.rstrip("\n")))


def _parameters(cell: str) -> str:
    """The parameters cell with the common parameters first, then the chapter's own lines as they were."""
    first, *body = cell.splitlines(keepends=True)
    own, skip_comments = [], []
    for line in body:
        if _COMMON_NAMES.match(line):
            skip_comments = []  # a comment block right above a common parameter belongs to it
            continue
        if line.startswith("#"):
            skip_comments.append(line)
            continue
        own.extend(skip_comments)
        skip_comments = []
        own.append(line)
    own.extend(skip_comments)
    text = first + COMMON_PARAMETERS + "".join(own).rstrip("\n") + "\n"
    return _with_tail(text, cell)


def with_opening(text: str, name: str = "chapter") -> str:
    """``text`` (a chapter's jupytext source) with the shared opening as :data:`COLAB_CELL`,
    :data:`GPU_NOTE_CELL` and :data:`COMMON_PARAMETERS` say; a :class:`SourceError` naming ``name`` and the
    missing part when one is not there to rewrite."""
    header, cells = _cells(text)
    if not cells[0].startswith('# %% tags=["remove-cell"]') or "google.colab" not in cells[0]:
        raise SourceError(f"{name}: its first cell is not the Colab cell (tags=[\"remove-cell\"], google.colab)")
    cells[0] = _with_tail(COLAB_CELL, cells[0])
    gpu = [i for i, c in enumerate(cells) if "{include} ../book/_gpu.md" in c]
    params = [i for i, c in enumerate(cells) if c.startswith('# %% tags=["parameters"]')]
    if len(gpu) != 1 or len(params) != 1:
        raise SourceError(f"{name}: expected one GPU-note cell and one parameters cell, found {len(gpu)} and "
                          f"{len(params)}")
    cells[gpu[0]] = _with_tail(GPU_NOTE_CELL, cells[gpu[0]])
    cells[params[0]] = _parameters(cells[params[0]])
    return header + "".join(cells)


def chapters(root: Path = ROOT) -> list[Path]:
    """The chapters' sources, ``notebooks/NN_slug.py``, in book order."""
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.py"))


def write_openings(root: Path) -> list[Path]:
    """Rewrite every chapter whose opening differs from the shared one (written atomically); returns them."""
    changed = []
    for path in chapters(root):
        old = path.read_text()
        new = with_opening(old, path.name)
        if new != old:
            atomic_write_text(path, new)
            changed.append(path)
    return changed


if __name__ == "__main__":  # pragma: no cover (make sync)
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    for p in write_openings(root):
        print(f"[sources] wrote the shared opening into {p.relative_to(root)}")
