"""Measurement helpers for ``bench/bench_capture.py``: paired timing, peak memory, report.

* :func:`compare` times two workloads A (the baseline) and B (emocircuits)
  side by side: one warm-up call of each, then A, B, A, B... and medians.
  Each workload returns how many tokens it processed (or generated), so
  tokens per second come with every time. Peak memory is measured in one
  extra, untimed call of each side, so the sampler never slows the timed
  runs.
* :class:`PeakMemory`: on CUDA ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``; on the CPU the resident set size sampled
  every 5 ms by a background thread (psutil), minus the RSS at entry, after
  ``gc.collect()`` and glibc's ``malloc_trim(0)`` have handed freed memory
  back, so a warm allocator does not hide what the call needs. Without
  psutil it falls back to ``getrusage`` (the process's lifetime maximum,
  which only grows: an increase shows only when a call beats every earlier
  peak); ``memory_method`` in the report says which was used.
* :func:`format_table` and :func:`write_json` print and store the results
  (the JSON is written to a temporary file and renamed into place).
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import torch

MB = 2**20

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with jupyter
    psutil = None

MEMORY_METHOD_CPU = ("peak RSS increase, sampled every 5 ms (psutil)" if psutil is not None else
                     "getrusage ru_maxrss increase (process lifetime maximum; 0 unless a call sets a new peak)")
MEMORY_METHOD_CUDA = "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated at entry"


def _release_free_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` -> ``m.peak_mb``, the peak increase while the block ran."""

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.cuda = device.type == "cuda"
        self.device = device
        self.interval = interval
        self.peak_mb = 0.0

    def _rss(self) -> int:
        if psutil is not None:
            return self._proc.memory_info().rss
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._rss())

    def __enter__(self) -> "PeakMemory":
        _release_free_memory()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._proc = psutil.Process() if psutil is not None else None
        self._base = self._peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if psutil is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread.is_alive():
                self._thread.join()
            peak = max(self._peak, self._rss())
        self.peak_mb = max(peak - self._base, 0) / MB


class OtherLoad:
    """``with OtherLoad() as o: ...`` -> ``o.share``: CPU used by *other* processes, as a share of all cores.

    System busy time minus this process's CPU time, over wall time x cores
    (psutil; ``None`` without it). With intra-op threads on every core, even
    a small share makes torch wait at each parallel region and times balloon.
    """

    share: float | None = None

    def _now(self) -> tuple[float, float, float]:
        c = psutil.cpu_times()
        own = psutil.Process().cpu_times()
        return time.perf_counter(), sum(c) - c.idle - getattr(c, "iowait", 0.0), own.user + own.system

    def __enter__(self) -> "OtherLoad":
        self._start = self._now() if psutil is not None else None
        return self

    def __exit__(self, *exc) -> None:
        if self._start is None:
            return
        (t0, busy0, own0), (t1, busy1, own1) = self._start, self._now()
        self.share = round(max(busy1 - busy0 - (own1 - own0), 0.0) / max((t1 - t0) * (os.cpu_count() or 1), 1e-9), 3)


def compare(a: Callable[[], int], b: Callable[[], int], device: torch.device, repeats: int = 5,
            min_seconds: float = 4.0, max_repeats: int = 25) -> dict:
    """Time A and B alternately; return ``{"a": side, "b": side}`` with medians and peak memory.

    Runs ``repeats`` pairs, or more for quick workloads: as many as fit in
    about ``min_seconds`` (judged from the warm-up), up to ``max_repeats``.
    Each side: ``s`` (median seconds), ``runs_s``, ``tokens`` (median per
    call), ``tok_s`` (tokens / median seconds) and ``peak_mb``; also
    ``other_cpu_share`` during the timed runs (see :class:`OtherLoad`).
    """
    cuda = device.type == "cuda"

    def timed(fn: Callable[[], int]) -> tuple[float, int]:
        if cuda:
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        n = fn()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t, n

    warm = timed(a)[0] + timed(b)[0]
    n_pairs = min(max(repeats, math.ceil(min_seconds / max(warm, 1e-6))), max(max_repeats, repeats))
    runs: dict[str, list[tuple[float, int]]] = {"a": [], "b": []}
    with OtherLoad() as other:
        for _ in range(n_pairs):
            runs["a"].append(timed(a))
            runs["b"].append(timed(b))
    out = {}
    for key, fn in (("a", a), ("b", b)):
        with PeakMemory(device) as mem:
            fn()
        times = [t for t, _ in runs[key]]
        med, tokens = statistics.median(times), statistics.median(n for _, n in runs[key])
        out[key] = {"s": med, "runs_s": [round(t, 5) for t in times], "tokens": tokens,
                    "tok_s": tokens / med if tokens else None, "peak_mb": round(mem.peak_mb, 1)}
    out["repeats"] = n_pairs
    out["other_cpu_share"] = other.share
    return out


def judge(value: float | None, op: str, bound: float) -> bool | None:
    if value is None:
        return None
    return value >= bound if op == ">=" else value <= bound


def system_info(device: torch.device) -> dict:
    import nnsight
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "nnsight": nnsight.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "cpu_model": cpu,
            "device": str(device), "loadavg_1min_start": round(os.getloadavg()[0], 2),
            "memory_method": MEMORY_METHOD_CUDA if device.type == "cuda" else MEMORY_METHOD_CPU}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _fmt_s(t: float | None) -> str:
    if t is None:
        return "-"
    return f"{t * 1e3:.0f} ms" if t < 1 else f"{t:.2f} s"


def _fmt_pair(x: float | None, y: float | None, digits: int = 0) -> str:
    f = lambda v: "-" if v is None else f"{v:.{digits}f}"
    return f"{f(x)}/{f(y)}"


def _fmt_rate(item: dict, a: dict, b: dict) -> str:
    if a.get("tok_s") is None and b.get("tok_s") is None:
        return "-"
    return f"{_fmt_pair(a.get('tok_s'), b.get('tok_s'))} {item.get('unit', 'tok')}/s"


def format_table(items: list[dict]) -> str:
    """One line per item: name, A, B, ratio, target, met, peak MB (A/B), tokens (or texts) per s (A/B)."""
    head = ("item", "A", "B", "ratio", "target", "met", "peak MB A/B", "rate A/B")
    rows = [head]
    for it in items:
        a, b = it.get("a") or {}, it.get("b") or {}
        met = {True: "yes", False: "NO", None: "-"}[it.get("met")]
        ratio = it.get("ratio")
        rows.append((it["name"], _fmt_s(a.get("s")), _fmt_s(b.get("s")),
                     "-" if ratio is None else f"{ratio:.2f}", it.get("target", "-"), met,
                     _fmt_pair(a.get("peak_mb"), b.get("peak_mb")), _fmt_rate(it, a, b)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_json(path: str | Path, data: dict) -> Path:
    """Write ``data`` as JSON atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
