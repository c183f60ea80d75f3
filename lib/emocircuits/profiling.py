"""Where a chapter's time goes: seconds per phase and tokens, noted by the library as it works.

The book runner (:func:`emocircuits.book.run_chapter`) names a file prefix in ``EMOCIRCUITS_PROFILE``;
every process of the chapter that imports emocircuits (its kernel, and a CLI it starts) then writes
``<prefix>.<pid>.json`` with what it measured, and the runner adds them up. Outside the runner the
counters still run (:func:`snapshot` reads them) and nothing is written. The build's reference figure
is :func:`emocircuits.generation.reference_speed`, measured by :func:`emocircuits.book.reference_speed`.

Phases: ``generation`` (:func:`generation.generate`), ``capture`` (forward passes that read a model's
internals: :func:`activations.capture`, circuits' ``LastToken`` passes and
:func:`causal.sublayer_influence`), ``judging`` (the judges' scoring and coherence checks), ``perplexity``
(:func:`coherence.perplexity`, coherence's forward passes), ``judge_fitting`` (fitting the judges or loading
their fits, embedding their corpora, and waiting for another chapter that fits the same one) and
``training`` (transcoder training). A phase inside another is counted once, in the inner
phase. What no phase covers is the chapter's ``other`` time: starting the kernel, imports, loading
models, plots and tables, and the forward passes no phase names (attribution graphs,
:func:`generation.forward`, transcoders' splice losses).

Tokens: ``generated_tokens`` (new tokens kept; the end-of-sequence token and what follows are left out)
and ``forward_tokens`` (non-padding tokens of :func:`activations.capture`'s passes; a generation's prompt
and the other capture passes are not counted).

The state is plain data, kept per thread (no lock object: a traced block that reaches a timed function
can still be shipped to a remote backend); a forked child starts from zero.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .cache import atomic_write_text

PROFILE_ENV = "EMOCIRCUITS_PROFILE"
PHASES = ("generation", "capture", "judging", "perplexity", "judge_fitting", "training")
FLUSH_EVERY_S = 2.0

def _zero() -> dict:
    """Counters at zero, in the shape :func:`snapshot` and :func:`collect` return."""
    return {"seconds": {p: 0.0 for p in PHASES}, "generated_tokens": 0, "forward_tokens": 0}


_counts = _zero()
_stacks: dict[int, list[list]] = {}  # per thread: [phase, seconds spent in inner phases]
_last_flush = [0.0]


def _reset() -> None:
    """Start from zero (a forked child: its parent reports its own time)."""
    _counts.update(_zero())
    _stacks.clear()
    _last_flush[0] = 0.0


@contextmanager
def phase(name: str):
    """Count the time inside the block as ``name`` (one of :data:`PHASES`), less inner phases' time."""
    if name not in PHASES:
        raise ValueError(f"phase {name!r}: expected one of {', '.join(PHASES)}")
    t0 = time.perf_counter()
    stack = _stacks.setdefault(threading.get_ident(), [])
    stack.append([name, 0.0])
    try:
        yield
    finally:
        total = time.perf_counter() - t0
        _, inner = stack.pop()
        _counts["seconds"][name] += total - inner
        if stack:
            stack[-1][1] += total
        else:
            flush()


def timed(name: str):
    """Decorator: every call of the function is :func:`phase` ``name``."""
    if name not in PHASES:
        raise ValueError(f"phase {name!r}: expected one of {', '.join(PHASES)}")

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with phase(name):
                return fn(*args, **kwargs)
        return inner
    return wrap


def count(generated: int = 0, forward: int = 0) -> None:
    """Add generated and forward tokens."""
    _counts["generated_tokens"] += int(generated)
    _counts["forward_tokens"] += int(forward)


def snapshot() -> dict:
    """``{"seconds": {phase: s}, "generated_tokens": n, "forward_tokens": n}`` of this process so far."""
    return {**_counts, "seconds": dict(_counts["seconds"])}


def flush(force: bool = False) -> None:
    """Write this process's counters to ``<EMOCIRCUITS_PROFILE>.<pid>.json`` (at most every
    :data:`FLUSH_EVERY_S` seconds unless ``force``); without the variable, do nothing."""
    prefix = os.environ.get(PROFILE_ENV)
    if not prefix:
        return
    now = time.monotonic()
    if not force and now - _last_flush[0] < FLUSH_EVERY_S:
        return
    _last_flush[0] = now
    atomic_write_text(Path(f"{prefix}.{os.getpid()}.json"), json.dumps(snapshot(), sort_keys=True))


def collect(prefix: str | Path) -> dict:
    """Add up (and remove) the files every process wrote under ``prefix``."""
    prefix = Path(prefix)
    total = _zero()
    for path in sorted(prefix.parent.glob(prefix.name + ".*.json")):
        try:
            got = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        finally:
            path.unlink(missing_ok=True)
        for p in PHASES:
            total["seconds"][p] += float(got.get("seconds", {}).get(p, 0.0))
        for k in ("generated_tokens", "forward_tokens"):
            total[k] += int(got.get(k, 0))
    return total


os.register_at_fork(after_in_child=_reset)
if os.environ.get(PROFILE_ENV):
    atexit.register(flush, True)
