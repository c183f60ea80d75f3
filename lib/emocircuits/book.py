"""Run every chapter with papermill, then render the book with Jupyter Book.

``emocircuits book [--quick | --full] [--model M] [--only NN]`` (and ``make book``):

1. each ``notebooks/NN_slug.py`` (the jupytext source) is converted to a
   notebook and executed by papermill, two at a time on a machine with 2 or
   more cores (``--jobs``), the longest first by the last measured times (a
   chapter that reads earlier chapters' records waits for them), with the parameters
   ``MODEL``, ``QUICK``, ``FULL`` and ``SEED``; executed copies go to
   ``_build/executed/`` (``executed-quick``, ``executed-full``; a model other
   than the default adds ``-<model>``, e.g. ``executed-quick-gemma-2-2b``);
2. a chapter whose source, parameters, library code, package versions and
   the data files it read (noted as it ran) are unchanged since its last
   successful run is not run again;
3. ``_config.yml``, ``_toc.yml``, ``book/`` and the executed notebooks are
   staged (:mod:`.staging`) and rendered by Jupyter Book (execution off) to ``_build/html``
   (``_build/html-quick``, ``_build/html-full``), replacing it only on success.

Three sizes, one per use (:func:`.records.sizer` picks a chapter's numbers):

- ``QUICK``: the regression run of ``make test``; smallest samples, a few
  minutes for the whole book on 2 CPU cores;
- default: ``make book``, sized to build in about a quarter of an hour on
  2 CPU cores; every number keeps its interval and baseline;
- ``FULL``: the larger samples (more layers, prompts, seeds, transcoder
  features and tokens), for a GPU or a patient CPU.

A failing chapter stops the run with the chapter's name and the failing cell.

Chapters call :func:`.records.record` with their headline numbers; under the runner
these land in ``NN_slug.results.json`` beside the executed notebook, where
the regression test compares them with ``tests/expected/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from . import profiling
from .cache import atomic_write_text, file_lock
from .records import RESULTS_ENV, executed_dir, html_dir, reads_records, recorded, results_path, size_name
from .registry import DEFAULT_MODEL, bundled_packages
from .sources import ROOT, chapters
from .staging import stage


class ChapterError(RuntimeError):
    pass


# The packages whose version can change a chapter's output (the bundled models' and the encoder's are added
# from registry.bundled_packages, which pins them).
KEY_PACKAGES = ("torch", "transformers", "nnsight", "sentence-transformers", "scikit-learn", "numpy", "safetensors")


def package_versions() -> dict[str, str]:
    """``{package: installed version}`` of :data:`KEY_PACKAGES` (``"absent"`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in KEY_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def _code_hash(root: Path) -> str:
    """What every chapter's output depends on besides its own source, its parameters and the data files it
    reads (:func:`watch_reads` notes those): the library's code and the versions of the packages that
    compute it. A change to any re-runs every chapter."""
    h = hashlib.sha256()
    for p in sorted((root / "lib" / "emocircuits").rglob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(json.dumps({"packages": package_versions(), "bundled": bundled_packages()}, sort_keys=True).encode())
    return h.hexdigest()


# A chapter's kernel (and any process it starts that imports emocircuits) notes in the file named by
# EMOCIRCUITS_READS every file of the folder named by EMOCIRCUITS_WATCH that it opens, and "." when it lists
# that folder. The chapter is reused only while each noted file (and the folder's listing) is unchanged.
READS_ENV = "EMOCIRCUITS_READS"
WATCH_ENV = "EMOCIRCUITS_WATCH"


def watch_reads() -> None:
    """Under :func:`run_chapter`, note the data files this process reads (a Python audit hook on ``open``,
    ``os.listdir`` and ``os.scandir``); elsewhere do nothing. Called when emocircuits is imported."""
    reads, folder = os.environ.get(READS_ENV), os.environ.get(WATCH_ENV)
    if not reads or not folder:
        return
    prefixes = {os.path.abspath(folder), os.path.realpath(folder)}
    seen: set[str] = set()
    busy = []

    def hook(event: str, args: tuple) -> None:
        if busy or event not in ("open", "os.listdir", "os.scandir") or not args:
            return
        path = args[0]
        if not isinstance(path, (str, bytes, os.PathLike)):
            return
        path = os.path.abspath(os.fsdecode(path))
        for prefix in prefixes:
            if path == prefix:
                rel = "."
            elif path.startswith(prefix + os.sep):
                rel = os.path.relpath(path, prefix)
            else:
                continue
            if rel not in seen:
                seen.add(rel)
                busy.append(1)
                try:
                    with open(reads, "a", encoding="utf-8") as fh:
                        fh.write(rel + "\n")
                finally:
                    busy.pop()
            return

    sys.addaudithook(hook)


def _read_digests(folder: Path, names) -> dict[str, str]:
    """``{name: sha256}`` of the noted files (``"absent"`` when gone); for ``"."``, of the folder's listing."""
    out = {}
    for name in sorted(set(names)):
        path = folder / name
        if name == ".":
            blob = json.dumps(sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []).encode()
        elif path.is_file():
            blob = path.read_bytes()
        else:
            out[name] = "absent"
            continue
        out[name] = hashlib.sha256(blob).hexdigest()
    return out


def _reusable(key_file: Path, key: str, data: Path) -> bool:
    """Whether the executed chapter beside ``key_file`` was made with ``key`` and the data it read then."""
    try:
        stored = json.loads(key_file.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(stored, dict) or stored.get("key") != key or not isinstance(stored.get("reads"), dict):
        return False
    return _read_digests(data, stored["reads"]) == stored["reads"]


def kernel_manager_class():
    """The kernel manager papermill starts each chapter's kernel with.

    The kernel and papermill talk over localhost TCP. Where jupyter_client,
    the kernelspec and pyzmq all support it (jupyter_client 8.10's
    ``transport_encryption``), the manager provisions CurveZMQ keys so the
    traffic is encrypted; without them ipykernel 7 warns, on every kernel
    start, that it is not. Elsewhere (older jupyter_client, as Colab may
    have, or pyzmq without libsodium) this is the plain manager.
    """
    import zmq
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    if "transport_encryption" not in AsyncKernelManager.class_trait_names() or not zmq.has("curve"):
        return AsyncKernelManager

    class EncryptedKernelManager(AsyncKernelManager):
        @default("transport_encryption")
        def _encryption_default(self):
            return "auto"  # provisioned when the kernelspec declares support

    return EncryptedKernelManager


def run_chapter(src: Path, out_dir: Path, params: dict, code_hash: str, force: bool = False) -> tuple[Path, bool]:
    """Execute one chapter; returns (executed notebook, whether it ran)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{src.stem}.ipynb"
    key_file = out_dir / f"{src.stem}.key"
    # Two builds of one folder at once (a `make book-quick` beside the tests' QUICK book) would share the
    # temporary files below; under the lock the second waits and then reuses what the first wrote. The key
    # is read under it too: it holds the earlier chapters' records, which the other build may have rewritten.
    with file_lock(out_dir / f".{src.stem}.lock"):
        text = src.read_text()
        if reads_records(text):
            earlier = {stem: nums for stem, nums in recorded(out_dir).items() if stem < src.stem}
            text += json.dumps(earlier, sort_keys=True)
        key = hashlib.sha256((text + repr(sorted(params.items())) + code_hash).encode()).hexdigest()
        if not force and out.exists() and _reusable(key_file, key, src.parent.parent / "data"):
            return out, False
        _execute(src, out_dir, params, key)
        return out, True


def _execute(src: Path, out_dir: Path, params: dict, key: str) -> None:
    """Run one chapter with papermill; its notebook, records and key replace the old ones only when it succeeds."""
    import jupytext
    import papermill as pm

    out = out_dir / f"{src.stem}.ipynb"
    key_file = out_dir / f"{src.stem}.key"
    nb = jupytext.read(src)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    inp = out_dir / f".{src.stem}.input.ipynb"
    jupytext.write(nb, inp)
    tmp = out_dir / f".{src.stem}.running.ipynb"
    results = results_path(out_dir, src.stem)
    tmp_results = out_dir / f".{src.stem}.results.json"
    tmp_results.unlink(missing_ok=True)
    tmp_reads = out_dir / f".{src.stem}.reads"
    tmp_reads.write_text("")
    data = src.parent.parent / "data"
    # the kernel inherits these: where to put its records, and where to note the data files it reads
    prof = out_dir / f".{src.stem}.profile"
    profiling.collect(prof)  # leftovers of a run that was stopped
    env = {RESULTS_ENV: str(tmp_results), READS_ENV: str(tmp_reads), WATCH_ENV: str(data),
           profiling.PROFILE_ENV: str(prof)}
    old_env = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        for attempt in (1, 2):
            try:
                pm.execute_notebook(str(inp), str(tmp), parameters=params, kernel_name="python3",
                                    cwd=str(src.parent), progress_bar=False,
                                    kernel_manager_class=kernel_manager_class())
                break
            except RuntimeError as err:
                # two kernels started at once can be handed the same localhost port; the second then dies
                # before its first reply, having run nothing: start it once more on fresh ports
                if attempt == 2 or "before replying to kernel_info" not in str(err):
                    raise
        reads = _read_digests(data, [n for n in tmp_reads.read_text(encoding="utf-8").splitlines() if n])
        measured = profiling.collect(prof)
    except pm.PapermillExecutionError as err:
        tmp.unlink(missing_ok=True)
        profiling.collect(prof)
        tmp_results.unlink(missing_ok=True)
        raise ChapterError(
            f"chapter {src.stem} failed in cell {err.exec_count} (index {err.cell_index}): "
            f"{err.ename}: {err.evalue}"
        ) from None
    finally:
        inp.unlink(missing_ok=True)
        tmp_reads.unlink(missing_ok=True)
        for name, value in old_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    tmp.replace(out)
    atomic_write_text(out_dir / f"{src.stem}.{PROFILE}", json.dumps(measured, indent=1, sort_keys=True) + "\n")
    if tmp_results.exists():
        tmp_results.replace(results)
    else:
        results.unlink(missing_ok=True)
    atomic_write_text(key_file, json.dumps({"key": key, "reads": reads}, indent=1, sort_keys=True))


def _run_in_worker(src: Path, out_dir: Path, params: dict, code_hash: str, force: bool, threads: int):
    """One chapter in a worker process: its kernel gets ``threads`` CPU threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    t0 = time.time()
    _, ran = run_chapter(src, out_dir, params, code_hash, force=force)
    return ran, time.time() - t0


def default_jobs() -> int:
    """Chapters at once: 2 where there are at least 2 CPU cores, else 1. Two
    one-thread chapters share 2 cores better than one chapter with 2 threads:
    much of a chapter is small-batch decoding and Python-side work, which a
    second thread barely speeds up (measured: about 20% less wall time for the
    QUICK book)."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


TIMINGS = "timings.json"
PROFILE = "profile.json"


def reference_speed() -> dict:
    """The machine's yardstick (:func:`generation.reference_speed`, on the default model), measured in a
    fresh process on one thread, as each chapter runs: this module, which every chapter's kernel imports,
    loads no model code itself."""
    code = "import json; from emocircuits.generation import reference_speed; print(json.dumps(reference_speed()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"the reference measurement failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_profile(executed: Path, stems: Sequence[str], timings: dict[str, float], reference: dict | None,
                  ran: Sequence[str] = ()) -> dict:
    """``executed/profile.json``: per chapter, its wall time (``timings``), the seconds of each phase
    (:mod:`profiling`), the rest (``other``), its tokens and whether it ran in this build (``ran``: a reused
    chapter keeps the profile of the build that ran it); and the reference figure measured in this run
    (:func:`reference_speed`), or the previous one where ``reference`` is None."""
    path = executed / PROFILE
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    chapters = {}
    for stem in stems:
        try:
            got = json.loads((executed / f"{stem}.{PROFILE}").read_text())
        except (OSError, ValueError):
            continue
        wall = float(timings.get(stem, math.nan))
        seconds = {k: round(v, 1) for k, v in got["seconds"].items()}
        seconds["other"] = round(wall - sum(got["seconds"].values()), 1)
        chapters[stem] = {"wall_s": wall, "seconds": seconds, "generated_tokens": got["generated_tokens"],
                          "forward_tokens": got["forward_tokens"], "ran": stem in ran}
    out = {"reference": reference or old.get("reference"), "chapters": chapters}
    atomic_write_text(path, json.dumps(out, indent=1, sort_keys=True) + "\n")
    return out


def profile_table(profile: dict) -> str:
    """The profile as a text table (printed at the end of a build)."""
    cols = (*profiling.PHASES, "other")
    lines = [f"{'chapter':24s} {'wall s':>7s} " + " ".join(f"{c:>13s}" for c in cols)
             + f" {'gen tok':>8s} {'fwd tok':>9s}"]
    for stem, c in sorted(profile["chapters"].items()):
        lines.append(f"{stem:24s} {c['wall_s']:7.1f} " + " ".join(f"{c['seconds'].get(k, 0):13.1f}" for k in cols)
                     + f" {c['generated_tokens']:8d} {c['forward_tokens']:9d}")
    ref = profile.get("reference")
    if ref:
        lines.append(f"reference: plain transformers generate on {ref['model']}, {ref['prompts']} prompts x "
                     f"{ref['new_tokens']} tokens, {ref['threads']} thread: {ref['tokens_per_s']:.0f} tokens/s")
    return "\n".join(lines)


def _timings(root: Path, executed: Path, size: str) -> dict[str, float]:
    """Seconds each chapter took when it last ran at this size: the build
    folder's ``timings.json`` over ``notebooks/timings.json`` (measured on
    2 CPU cores and committed, so that a fresh clone schedules well too)."""
    out: dict[str, float] = {}
    for path, section in ((root / "notebooks" / TIMINGS, size), (executed / TIMINGS, None)):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        data = data.get(section, {}) if section else data
        if isinstance(data, dict):
            out.update({str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))})
    return out


def next_chapter(pending: list[Path], running: list[Path], reads: dict[Path, bool],
                 timings: dict[str, float]) -> Path | None:
    """The chapter to start next, or None when none may start yet.

    The longest first (by ``timings``; a chapter never timed counts as the
    longest), so that two workers finish together: on the QUICK book this
    starts chapters 03 and 05 at once instead of after 00-02. A chapter that
    reads earlier records waits until every lower-numbered chapter is done.
    """
    busy = pending + running

    def ready(src: Path) -> bool:
        return not reads[src] or not any(o.stem < src.stem for o in busy if o != src)

    ready_now = [s for s in pending if ready(s)]
    if not ready_now:
        return None
    return min(ready_now, key=lambda s: (-timings.get(s.stem, math.inf), s.stem))


def build(quick: bool = False, model: str = DEFAULT_MODEL, seed: int = 0, only: list[str] | None = None,
          force: bool = False, root: Path = ROOT, render: bool = True, full: bool = False,
          jobs: int | None = None) -> Path:
    """Run the chapters (``jobs`` at a time, the longest first) and render the book.

    With ``jobs > 1`` each chapter runs in its own process with one CPU
    thread per kernel, whatever the machine, so numbers do not depend on the
    number of cores; ``jobs=1`` runs them one by one with torch's default
    threads. A failing chapter stops the run (chapters already running
    finish) and is named with its failing cell.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    import multiprocessing

    executed = executed_dir(root, quick, full, model)
    params = {"MODEL": model, "QUICK": bool(quick), "FULL": bool(full), "SEED": int(seed)}
    jobs = default_jobs() if jobs is None else int(jobs)
    if jobs < 1:
        raise ValueError(f"jobs={jobs}: expected 1 or more chapters at a time")
    srcs = chapters(root)
    if only:
        srcs = [s for s in srcs if any(s.stem.startswith(o) for o in only)]
        if not srcs:
            raise ChapterError(f"--only {only} matches no chapter; chapters: {[s.stem for s in chapters(root)]}")
    code_hash = _code_hash(root)
    size = size_name(quick, full)

    timings = _timings(root, executed, size)
    ran_any = []

    def report(src, ran, seconds):
        status = f"done in {seconds:.1f}s" if ran else "unchanged, reused"
        print(f"[book] {src.stem}: {status}", flush=True)
        if ran:  # kept for the next build's schedule
            ran_any.append(src.stem)
            timings[src.stem] = round(seconds, 1)
            atomic_write_text(executed / TIMINGS, json.dumps(timings, indent=1, sort_keys=True) + "\n")

    if jobs == 1:
        for src in srcs:
            t0 = time.time()
            print(f"[book] {src.stem}: running (MODEL={model}, size {size}) ...", flush=True)
            _, ran = run_chapter(src, executed, params, code_hash, force=force)
            report(src, ran, time.time() - t0)
    else:
        # Chapters share only caches (written atomically, model conversion under a lock),
        # so any two may overlap, except that a reader of records waits for earlier chapters.
        reads = {src: reads_records(src.read_text()) for src in srcs}
        pending = list(srcs)
        running: dict = {}
        failure = None
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            while pending or running:
                while failure is None and len(running) < jobs:
                    src = next_chapter(pending, list(running.values()), reads, timings)
                    if src is None:
                        break
                    pending.remove(src)
                    print(f"[book] {src.stem}: running (MODEL={model}, size {size}, {jobs} at a time) ...", flush=True)
                    running[pool.submit(_run_in_worker, src, executed, params, code_hash, force, 1)] = src
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    src = running.pop(fut)
                    try:
                        ran, seconds = fut.result()
                    except ChapterError as err:
                        failure = failure or err
                        continue
                    report(src, ran, seconds)
        if failure is not None:
            raise failure
    if ran_any:
        # the yardstick for the machine, measured in the same run (when the book is rendered: a real build)
        profile = write_profile(executed, [s.stem for s in chapters(root)], timings,
                                reference_speed() if render else None, ran=ran_any)
        print(profile_table(profile), flush=True)
    if not render:
        return executed
    with file_lock(executed / ".render.lock"):  # one render of a folder at a time: they share a staging folder
        return render_html(root, executed, html_dir(root, quick, full, model))


def render_html(root: Path, executed: Path, out: Path) -> Path:
    """Render the executed notebooks with Jupyter Book into ``out`` (replaced
    only when the build succeeds); returns ``out/index.html``."""
    work = root / "_build" / f".render-{out.name}"
    if work.exists():
        shutil.rmtree(work)
    staging = work / "src"
    stage(root, executed, staging, recorded(executed))
    t0 = time.time()
    print("[book] rendering with Jupyter Book ...", flush=True)
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", str(staging), "--path-output", str(work), "--quiet"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ChapterError(f"jupyter-book build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    (work / "_build" / "html").rename(out)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    index = out / "index.html"
    print(f"[book] rendered in {time.time() - t0:.1f}s: {index}", flush=True)
    return index


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="emocircuits book", description="Execute every chapter and build the book.")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the smallest run (what the tests do)")
    size.add_argument("--full", action="store_true", help="the largest samples (hours on a CPU; for a GPU)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", help="chapter number prefixes to run, e.g. 00 03")
    p.add_argument("--force", action="store_true", help="re-run chapters even when unchanged")
    p.add_argument("--no-render", action="store_true", help="execute the notebooks only")
    p.add_argument("--jobs", type=int, default=None,
                   help="chapters run at once (default: 2 on a machine with 2 or more cores)")
    args = p.parse_args(argv)
    try:
        build(quick=args.quick, full=args.full, jobs=args.jobs, model=args.model, seed=args.seed, only=args.only,
              force=args.force, render=not args.no_render)
    except ChapterError as err:
        print(f"[book] error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
