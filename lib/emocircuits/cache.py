"""The on-disk cache: where it lives, stable keys, atomic writes.

Everything derived (converted model weights, captured activations, judges,
transcoders) lives under ``$EMOCIRCUITS_CACHE`` (default
``~/.cache/emocircuits``), keyed by a hash of what produced it: the inputs and
settings, and the source of the code that computed it (:func:`code_version`).
Writes go to a temporary file in the same folder and are renamed into place,
so a crash never leaves half a file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence


def cache_root() -> Path:
    root = os.environ.get("EMOCIRCUITS_CACHE") or str(Path.home() / ".cache" / "emocircuits")
    return Path(root).expanduser()


def cache_dir(sub: str) -> Path:
    path = cache_root() / sub
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(obj: Any, n: int = 16) -> str:
    """A short sha256 of a JSON-serialisable description (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


PACKAGE_DIR = Path(__file__).resolve().parent


def code_version(*modules: str, folder: str | Path | None = None) -> str:
    """A short sha256 of the source of the named emocircuits modules (``"activations"``, ...).

    It is part of the key of everything those modules cache, so a change to the code that produced a cached
    file is a miss, never a stale hit. ``folder`` defaults to this package's folder.
    """
    if not modules:
        raise ValueError("code_version(): name at least one module (e.g. 'activations')")
    base = Path(folder) if folder is not None else PACKAGE_DIR
    h = hashlib.sha256()
    for name in modules:
        path = base / f"{name}.py"
        if not path.is_file():
            raise ValueError(f"code_version({name!r}): no module {path.name} in {base}")
        h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs.

    Chapters of the book run in parallel processes; a cache entry that one
    of them is still writing must not be written or removed by another.
    Where ``fcntl`` is missing (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_arrays(path: str | Path, compute: Callable[[], dict], code: Sequence[str]) -> dict:
    """The arrays stored at ``path`` (safetensors), or ``compute()``'s, stored there first.

    The file's name gains the version of the source of the ``code`` modules and of this one, which stores
    them (:func:`code_version`), so a change to the code that made or stored the arrays is a miss. Parallel
    chapters that need the same entry take turns under a lock (kept apart from the cache entries): the first
    computes, the others load. Arrays are made C-contiguous before writing, since safetensors writes memory
    as it lies (scikit-learn's ``coef_`` is Fortran-ordered and would reload scrambled).
    """
    import numpy as np
    from safetensors.numpy import load_file, save_file

    path = Path(path)
    path = path.with_name(f"{path.stem}-{code_version('cache', *code)}{path.suffix}")
    with file_lock(cache_root() / "locks" / f"{path.parent.name}-{path.name}.lock"):
        if path.exists():
            return load_file(str(path))
        arrays = {k: np.ascontiguousarray(v) for k, v in compute().items()}
        atomic_write(path, lambda p: save_file(arrays, str(p)))
        return arrays
