"""What a chapter records and reads back, and where a build's folders are (every chapter).

- The size knob: ``size = sizer(QUICK, FULL)`` once, then ``size(quick, book, full)`` wherever a number
  depends on the run's size.
- :func:`record` stores a chapter's headline numbers (under the book runner, in ``NN_slug.results.json``
  beside the executed notebook, where the regression test compares them with ``tests/expected/``);
  :func:`recorded` reads every chapter's back (the results chapter, the landing page).
- :func:`executed_dir` and :func:`html_dir` name a build's folders by size and model.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from . import profiling
from .cache import atomic_write_text, stable_hash
from .registry import DEFAULT_MODEL
from .sources import ROOT

SIZES = ("quick", "book", "full")


def size_name(quick: bool = False, full: bool = False) -> str:
    """``"quick"``, ``"book"`` or ``"full"`` from a chapter's two flags."""
    if quick and full:
        raise ValueError("QUICK=True and FULL=True: choose one (QUICK for the regression run, FULL for the "
                         "largest samples, neither for the default book)")
    return "quick" if quick else "full" if full else "book"


def sizer(quick: bool = False, full: bool = False):
    """The chapters' size knob: ``size = sizer(QUICK, FULL)`` once, then
    ``size(q, b, f)`` wherever a number depends on the run's size; it
    returns ``q`` in a QUICK run, ``f`` in a FULL one and ``b`` otherwise
    (the default book)."""
    i = SIZES.index(size_name(quick, full))

    def size(quick_value, book_value, full_value):
        return (quick_value, book_value, full_value)[i]

    size.name = SIZES[i]
    return size


RESULTS_ENV = "EMOCIRCUITS_RESULTS"


def record(**numbers) -> dict:
    """Store a chapter's headline numbers; returns them.

    A number is a float, or an estimate with its interval ``(est, lo, hi)`` (what :func:`stats.bootstrap_ci`
    returns), stored as ``key``, ``key_lo`` and ``key_hi``. Under :func:`.book.run_chapter` they are merged into
    the chapter's results file (named by the environment variable ``EMOCIRCUITS_RESULTS``); in an
    interactive session nothing is written.
    """
    clean = {}
    for k, v in numbers.items():
        if isinstance(v, (tuple, list)):
            if len(v) != 3:
                raise ValueError(f"record({k}=...): an interval is (estimate, low, high), got {len(v)} values")
            parts = dict(zip((k, f"{k}_lo", f"{k}_hi"), v))
        else:
            parts = {k: v}
        for name, x in parts.items():
            try:
                clean[name] = float(x)
            except (TypeError, ValueError):
                raise ValueError(f"record({k}=...): expected a number or (estimate, low, high), got "
                                 f"{type(x).__name__}") from None
    path = os.environ.get(RESULTS_ENV)
    if path:
        p = Path(path)
        old = json.loads(p.read_text()) if p.exists() else {}
        old.update({k: (None if math.isnan(v) else v) for k, v in clean.items()})
        atomic_write_text(p, json.dumps(old, indent=1, sort_keys=True))
        profiling.flush(force=True)  # a chapter records at its end: its time so far is noted too
    return clean


def results_path(out_dir: Path, stem: str) -> Path:
    return Path(out_dir) / f"{stem}.results.json"


def reads_records(text: str) -> bool:
    """Whether a chapter's source reads earlier chapters' records: such a chapter
    re-runs when they change and, in a parallel build, runs after all of them."""
    return "recorded(" in text


def recorded(folder: str | Path | None = None, root: Path = ROOT) -> dict[str, dict]:
    """Every chapter's recorded numbers, ``{stem: {name: value}}``.

    ``folder`` defaults to the build this chapter runs in (under
    :func:`.book.run_chapter`), else the first of ``_build/executed-full``,
    ``_build/executed`` and ``_build/executed-quick`` that holds records.
    A folder without records gives ``{}``.
    """
    if folder is None:
        running = os.environ.get(RESULTS_ENV)
        if running:
            folder = Path(running).parent
        else:
            found = [d for d in (executed_dir(root, full=True), executed_dir(root), executed_dir(root, quick=True))
                     if list(d.glob("*.results.json"))]
            folder = found[0] if found else executed_dir(root, quick=True)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"recorded(folder={str(folder)!r}): expected a build folder of executed chapters")
    return {p.name.removesuffix(".results.json"): json.loads(p.read_text())
            for p in sorted(folder.glob("[0-9][0-9]_*.results.json"))}


def model_slug(model: str) -> str:
    """A folder-name part for a model other than the default: its registry name, or for a folder or hub id
    its last part and a short hash of the whole (two folders named ``model`` stay apart)."""
    if re.fullmatch(r"[A-Za-z0-9._-]+", model):
        return model
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model.rstrip("/")).name) or "model"
    return f"{tail}-{stable_hash(model, n=8)}"


def _sized_dir(root: Path, base: str, quick: bool, full: bool, model: str = DEFAULT_MODEL) -> Path:
    """``_build/<base>`` for the default book, ``_build/<base>-quick`` / ``-full`` otherwise; a model other
    than the default adds ``-<model>``, so its run never replaces the default model's."""
    name = size_name(quick, full)
    folder = base if name == "book" else f"{base}-{name}"
    return root / "_build" / (folder if model == DEFAULT_MODEL else f"{folder}-{model_slug(model)}")


def executed_dir(root: Path = ROOT, quick: bool = False, full: bool = False, model: str = DEFAULT_MODEL) -> Path:
    """Where executed chapters go: ``_build/executed`` (``-quick``, ``-full``; ``-<model>`` for another model)."""
    return _sized_dir(root, "executed", quick, full, model)


def html_dir(root: Path = ROOT, quick: bool = False, full: bool = False, model: str = DEFAULT_MODEL) -> Path:
    """Where the rendered book goes: ``_build/html`` (``-quick``, ``-full``; ``-<model>`` for another model)."""
    return _sized_dir(root, "html", quick, full, model)
