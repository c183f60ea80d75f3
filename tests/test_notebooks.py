"""Notebook pairs stay in sync, carry no outputs, have parameters, and run (QUICK)."""

from __future__ import annotations

import ast
import base64
import json
import os
from pathlib import Path

import jupytext
import numpy as np
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_there_are_chapters():
    assert SOURCES, "no notebooks/NN_slug.py found"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_pair_in_sync_and_without_outputs(src):
    ipynb = src.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `make sync`"
    paired = nbformat.read(ipynb, as_version=4)
    assert _cells(jupytext.read(src)) == _cells(paired), f"{src.name} and {ipynb.name} drifted: run `make sync`"
    for cell in paired.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, \
                f"{ipynb.name} carries outputs: clear them before committing"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_every_chapter_opens_with_the_shared_opening(src):
    """The Colab cell, the GPU note and the common parameters are written once (emocircuits.sources) and
    put into every chapter by `make sync`; a chapter edited by hand away from them fails here."""
    from emocircuits.sources import with_opening

    assert with_opening(src.read_text(), src.name) == src.read_text(), \
        f"{src.name}: its opening differs from lib/emocircuits/sources.py: run `make sync`"


def test_make_sync_writes_the_opening_and_keeps_the_chapters_own_parameters(tmp_path):
    from emocircuits.sources import COLAB_CELL, COMMON_PARAMETERS, SourceError, with_opening, write_openings

    text = (SOURCES[3].read_text().replace("work from the clone", "work from a clone")
            .replace(COMMON_PARAMETERS, 'MODEL = "x"\nQUICK = False\n# the own knob\nKNOB = 3\n'
                                        'FULL = False\nSEED = 1\n'))
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "03_x.py").write_text(text)
    assert write_openings(tmp_path) == [tmp_path / "notebooks" / "03_x.py"]
    fixed = (tmp_path / "notebooks" / "03_x.py").read_text()
    assert COLAB_CELL in fixed and COMMON_PARAMETERS + "# the own knob\nKNOB = 3\n" in fixed
    assert 'MODEL = "x"' not in fixed and "SEED = 1" not in fixed
    assert write_openings(tmp_path) == []  # written once: a second pass changes nothing
    with pytest.raises(SourceError, match="03_y.py: its first cell is not the Colab cell"):
        with_opening(fixed.replace("google.colab", "elsewhere"), "03_y.py")
    with pytest.raises(SourceError, match="one GPU-note cell and one parameters cell, found 0 and 1"):
        with_opening(fixed.replace("{include} ../book/_gpu.md", "{include} x.md"), "03_y.py")


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_parameters_cell(src):
    nb = jupytext.read(src)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{src.name} needs exactly one cell tagged 'parameters'"
    for name in ("MODEL", "QUICK", "FULL", "SEED"):
        assert f"{name} =" in params[0].source, f"{src.name}: parameters cell lacks {name}"


def _executed(quick_book, stem):
    nb = nbformat.read(quick_book.executed / f"{stem}.ipynb", as_version=4)
    return nb, [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def test_chapter_00_runs_quick_and_shows_real_output(quick_book):
    from emocircuits.book import _code_hash, run_chapter

    nb, outputs = _executed(quick_book, "00_setup")
    text = "\n".join(o.get("text", "") for o in outputs)
    import re

    diff = float(re.search(r"over layers 0\.\.28: ([0-9.e+-]+)", text).group(1))
    assert diff < 1e-4
    assert "after the final norm" in text and "alpha = +0.00" in text
    # a second run with nothing changed is skipped
    _, ran_again = run_chapter(ROOT / "notebooks" / "00_setup.py", quick_book.executed, quick_book.params,
                               code_hash=_code_hash(ROOT))
    assert not ran_again


def test_editing_a_data_file_reruns_exactly_the_chapters_that_read_it(tmp_path, monkeypatch):
    """Chapters in their own kernels note the data files they open (and whether they list the data folder):
    editing a file re-runs the chapter that read it and no other; a new file re-runs the chapter that listed
    the folder; a library edit or a package upgrade re-runs all."""
    from emocircuits import book

    (tmp_path / "lib" / "emocircuits").mkdir(parents=True)
    (tmp_path / "lib" / "emocircuits" / "m.py").write_text("x = 1\n")
    data, notebooks = tmp_path / "data", tmp_path / "notebooks"
    data.mkdir()
    notebooks.mkdir()
    for name in ("a", "b"):
        (data / f"{name}.jsonl").write_text(f'{{"id": "{name}1"}}\n')
    head = '# %% tags=["parameters"]\nMODEL = "x"\nQUICK = True\nSEED = 0\n\n# %%\nimport emocircuits\n'
    # one reads a.jsonl with open(); the other lists the folder and reads b.jsonl in a subprocess
    (notebooks / "91_reads_a.py").write_text(head + 'print(open("../data/a.jsonl").read())\n')
    (notebooks / "92_lists.py").write_text(
        head + 'import pathlib, subprocess, sys\nprint(sorted(p.name for p in pathlib.Path("../data").glob("*")))\n'
        'subprocess.run([sys.executable, "-c", "import emocircuits; open(\'../data/b.jsonl\').read()"], check=True)\n')
    params = {"MODEL": "x", "QUICK": True, "SEED": 0}

    def ran() -> list[str]:
        code = book._code_hash(tmp_path)
        return [src.stem[:2] for src in sorted(notebooks.glob("*.py"))
                if book.run_chapter(src, tmp_path / "out", params, code_hash=code)[1]]

    assert ran() == ["91", "92"]
    assert ran() == []  # nothing changed: both reused
    keys = {p.stem: json.loads(p.read_text())["reads"] for p in (tmp_path / "out").glob("*.key")}
    assert set(keys["91_reads_a"]) == {"a.jsonl"} and set(keys["92_lists"]) == {".", "b.jsonl"}
    (data / "a.jsonl").write_text('{"id": "a2"}\n')
    assert ran() == ["91"]
    (data / "b.jsonl").write_text('{"id": "b2"}\n')
    assert ran() == ["92"]  # read by the chapter's subprocess
    (data / "c.jsonl").write_text('{"id": "c1"}\n')
    assert ran() == ["92"]  # a new file changes the listing only
    (tmp_path / "lib" / "emocircuits" / "m.py").write_text("x = 2\n")
    assert ran() == ["91", "92"]
    real = book.package_versions()
    assert set(real) == set(book.KEY_PACKAGES) and real["torch"] != "absent"
    monkeypatch.setattr(book, "package_versions", lambda: {**real, "torch": "99.0"})
    assert ran() == ["91", "92"]


def test_failing_chapter_names_chapter_and_cell(tmp_path):
    from emocircuits.book import ChapterError, run_chapter

    bad = tmp_path / "99_broken.py"
    bad.write_text('# %% tags=["parameters"]\nMODEL = "x"\nQUICK = True\nSEED = 0\n\n# %%\nx = 1\n\n# %%\n'
                   'raise RuntimeError("boom")\n')
    with pytest.raises(ChapterError, match=r"chapter 99_broken failed in cell .*RuntimeError: boom"):
        run_chapter(bad, tmp_path / "out", {"MODEL": "x", "QUICK": True, "SEED": 0}, code_hash="t")
    assert [p.name for p in (tmp_path / "out").iterdir() if p.suffix != ".lock"] == []  # nothing half-written


def _run_tiny_chapter(folder: Path, k: int) -> str:
    """Run a one-cell chapter in its own kernel; what it printed."""
    from emocircuits.book import run_chapter

    src = folder / f"9{k}_tiny.py"
    src.write_text('# %% tags=["parameters"]\nMODEL = "x"\nQUICK = True\nSEED = 0\n\n# %%\n'
                   f'import os, time\ntime.sleep(2)\nprint("chapter {k} pid", os.getpid())\n')
    out, ran = run_chapter(src, folder / f"out{k}", {"MODEL": "x", "QUICK": True, "SEED": 0}, code_hash="t")
    assert ran
    nb = nbformat.read(out, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_chapter_kernels_run_side_by_side_encrypted_and_quiet(tmp_path, capfd):
    """Two chapters' kernels at once (as `emocircuits book` runs them): each answers its own chapter, and
    ipykernel's warning about unencrypted TCP is not printed where the installed packages can encrypt."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import zmq
    from jupyter_client.manager import AsyncKernelManager

    from emocircuits.book import kernel_manager_class

    can_encrypt = "transport_encryption" in AsyncKernelManager.class_trait_names() and zmq.has("curve")
    if can_encrypt:
        assert kernel_manager_class()().transport_encryption == "auto"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:  # as the book does
        printed = list(pool.map(_run_tiny_chapter, [tmp_path, tmp_path], [1, 2]))
    pids = [int(p.split()[-1]) for p in printed]
    assert [p.split(" pid")[0] for p in printed] == ["chapter 1", "chapter 2"]
    assert len(set(pids)) == 2 and os.getpid() not in pids  # two kernels of their own
    if can_encrypt:
        captured = capfd.readouterr()
        assert "without encryption" not in captured.out + captured.err


def _run_recording_chapter(folder: Path) -> bool:
    """Run (or reuse) a one-cell chapter that records the kernel's pid; whether it ran."""
    from emocircuits.book import run_chapter

    src = folder / "90_rec.py"
    return run_chapter(src, folder / "out", {"MODEL": "x", "QUICK": True, "SEED": 0}, code_hash="t")[1]


def test_two_builds_of_one_folder_at_once_run_a_chapter_once_and_keep_its_records(tmp_path):
    """Two processes building the same folder (the tests' QUICK book beside a `make book-quick`) shared the
    chapter's temporary records, so one could delete the other's; now the second waits and reuses."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from emocircuits.records import recorded

    (tmp_path / "90_rec.py").write_text('# %% tags=["parameters"]\nMODEL = "x"\nQUICK = True\nSEED = 0\n\n# %%\n'
                                        "import os, time\nfrom emocircuits.records import record\ntime.sleep(1)\n"
                                        "record(pid=os.getpid())\n")
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        ran = list(pool.map(_run_recording_chapter, [tmp_path, tmp_path]))
    assert sorted(ran) == [False, True]  # one ran it, the other waited for it and reused it
    rec = recorded(tmp_path / "out")
    nb = nbformat.read(tmp_path / "out" / "90_rec.ipynb", as_version=4)
    assert list(rec) == ["90_rec"] and rec["90_rec"]["pid"] > 0
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".") and p.suffix != ".lock"]
    assert nb.metadata["papermill"]["parameters"]["MODEL"] == "x"


@pytest.mark.parametrize("stem", [p.stem for p in SOURCES])
def test_chapter_runs_quick_without_errors(stem, quick_book):
    """Every chapter in QUICK mode (the session's QUICK book): outputs, figures, no error, and nothing
    printed to stderr (a progress bar or a library's warning would show in the rendered page)."""
    nb, outputs = _executed(quick_book, stem)
    assert nb.metadata["papermill"]["parameters"] == quick_book.params
    assert outputs
    assert not [o for o in outputs if o.get("output_type") == "error"]
    stderr = ["".join(o.get("text", ""))[:80] for o in outputs if o.get("name") == "stderr"]
    assert not stderr, f"{stem} prints to stderr: {stderr[:3]}"
    assert [o for o in outputs if "image/png" in o.get("data", {})], f"{stem} shows no figure"


EXPECTED = sorted((ROOT / "tests" / "expected").glob("*.quick.json"))


@pytest.mark.parametrize("expected", EXPECTED, ids=lambda p: p.name.split(".")[0])
def test_chapter_headline_numbers_within_tolerance(expected, quick_book):
    """Regression: a QUICK run's recorded headline numbers stay near the stored ones."""
    from emocircuits.records import results_path

    stem = expected.name.split(".")[0]
    got = json.loads(results_path(quick_book.executed, stem).read_text())
    want = {k: v for k, v in json.loads(expected.read_text()).items() if not k.startswith("_")}
    drift = [f"{stem}: {k} = {got.get(k)} (expected {v} +- {tol})" for k, (v, tol) in want.items()
             if got.get(k) is None or abs(got[k] - v) > tol]
    assert not drift, "headline numbers drifted:\n" + "\n".join(drift)
    # the chapters' claims themselves, where a tolerance alone would admit their opposite
    if stem == "03_probes":
        assert got["auroc_mean_all"] > got["random_p95_mean_all"] and got["auroc_response"] > got["random_p95_response"]
        assert got["behaviour_r"] < got["behaviour_r_null_p95"]  # section 6: the probe does not track judged empathy
    if stem == "04_emotion_circuits":
        assert got["mean_drop_circuit"] > 3 * got["mean_drop_random"]
        assert got["zero_drop_circuit"] > got["zero_drop_random"] and got["tail_top1"] > got["tail_top1_random"]
        assert got["modulation_accuracy"] > got["random_modulation_accuracy"]  # the circuit, not any components
        # modulation at least matches steering at every coherence level both reach
        assert got["equal_coherence_gap_min"] >= 0 and got["heldout_equal_coherence_gap_min"] >= 0
        assert got["modulation_accuracy"] > got["plain_accuracy"]
        # section 8's variant, on section 9's fresh prompts (its held-out test in section 8 is exploratory)
        assert got["fresh_text_modulation_accuracy"] > got["fresh_plain_accuracy"]
        assert got["pick_modulation_accuracy"] > got["pick_random_accuracy"]  # section 9, on its fresh prompts
        assert got["pick_all_accuracy"] > got["pick_all_plain_accuracy"]  # section 9's added sample, pooled
    if stem == "06_steering":  # section 6: confirmed on situations that took no part in the choice
        assert got["sum_confirmed"] > got["sum_confirmed_chance"]
    if stem == "05_attribution_graphs":  # exact edges and a dictionary that explains something
        assert got["graph_check"] < 1e-3
        assert got["fve_mean"] > 0.2  # an untrained dictionary explains nothing (<= 0)


def _arch_cases():
    """``make test``: the chapters whose methods depend on the architecture (00: sites and steering; 04:
    neurons, heads and influence; 05: transcoders and attribution graphs) on a tiny Gemma 2, the class with
    the most quirks (post-norms, soft-capping, sliding windows). ``make test-archs``
    (EMOCIRCUITS_ARCHS=all): every chapter on every tiny architecture."""
    from testkit import TINY_KINDS

    if os.environ.get("EMOCIRCUITS_ARCHS") == "all":
        return [(kind, None) for kind in TINY_KINDS]
    return [("gemma2", ["00", "04", "05"])]


def _book_tiny(kind: str) -> Path:
    """``_build/tiny-models/<kind>``, made once (written to a temporary folder, then renamed into place; a
    process that finds another's already there keeps that one)."""
    import shutil
    import tempfile

    from testkit import make_tiny

    folder = ROOT / "_build" / "tiny-models" / kind
    if not (folder / "config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=folder.parent))
        make_tiny(tmp, kind, name=f"book-{kind}")
        if folder.exists() and not (folder / "config.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a half-made folder from an interrupted run
        try:
            os.rename(tmp, folder)
        except OSError:  # another process put its copy there first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@pytest.mark.parametrize("kind,only", _arch_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_chapters_run_to_the_end_on_a_tiny_model_of_another_architecture(kind, only):
    """A chapter given a local model folder (as a reader's own model would be) runs to its last cell and
    draws its figures; its numbers mean nothing on random weights. The run goes to its own folder
    (``_build/executed-quick-<model>``), leaving the default model's QUICK book alone."""
    from emocircuits.book import build, chapters
    from emocircuits.records import executed_dir

    folder = _book_tiny(kind)  # made once: a fixed path, so a re-run reuses the chapters
    build(quick=True, model=str(folder), only=only, render=False)
    out = executed_dir(ROOT, quick=True, model=str(folder))
    stems = [c.stem for c in chapters() if only is None or c.stem[:2] in only]
    for stem in stems:
        nb = nbformat.read(out / f"{stem}.ipynb", as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.get("output_type") == "error"], stem
        assert nb.metadata["papermill"]["parameters"]["MODEL"] == str(folder)
        if stem not in ("00_setup", "01_datasets", "07_results"):
            assert [o for o in outputs if "image/png" in o.get("data", {})], f"{stem} shows no figure on {kind}"


@pytest.mark.parametrize("kind,hook", [("transcoder_set", "mlp.hook_in"), ("cross_layer_transcoder", "hook_resid_mid")])
def test_chapter_05_runs_on_a_published_set_in_circuit_tracers_format(kind, hook, tmp_path):
    """Chapter 05 with ``TRANSCODERS`` naming a folder in circuit-tracer's format, per-layer and cross-layer,
    on a tiny Gemma 2 (random weights: its numbers mean nothing), runs to its end with an exact graph."""
    from emocircuits.book import _code_hash, run_chapter
    from emocircuits.records import results_path
    from emocircuits.models import load_model
    from testkit import write_tiny_set

    folder = _book_tiny("gemma2")  # shared with the architecture runs
    tset = write_tiny_set(tmp_path / "set", load_model(str(folder), device="cpu"), kind=kind, input_hook=hook)
    src = ROOT / "notebooks" / "05_attribution_graphs.ipynb"
    out, _ = run_chapter(src, tmp_path / "out", {"MODEL": str(folder), "QUICK": True, "TRANSCODERS": str(tset)},
                         _code_hash(ROOT), force=True)
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert f"'cross_layer': {kind == 'cross_layer_transcoder'}" in text
    got = json.loads(results_path(tmp_path / "out", "05_attribution_graphs").read_text())
    assert got["graph_check"] < 1e-3


def test_every_number_the_results_chapter_shows_has_an_expectation(quick_book):
    """Each number the comparison tables show (a row's number, its reporting judge's reading, its baseline's
    numbers), when a QUICK run records it, is checked in tests/expected/ or listed under ``_unchecked`` with
    a reason; a new record cannot go unchecked silently."""
    from emocircuits.records import results_path
    from emocircuits.results import shown_keys

    missing = []
    for stem, keys in sorted(shown_keys().items()):
        got = json.loads(results_path(quick_book.executed, stem).read_text())
        path = ROOT / "tests" / "expected" / f"{stem}.quick.json"
        want = json.loads(path.read_text()) if path.exists() else {}
        unchecked = want.get("_unchecked", {})
        assert all(isinstance(why, str) and len(why.split()) >= 3 for why in unchecked.values()), \
            f"{path.name}: each _unchecked key needs a reason"
        assert not set(unchecked) & set(want), f"{path.name}: a key is both checked and unchecked"
        missing += [f"{stem}: {k} = {got[k]}" for k in sorted(keys) if k in got and k not in want and k not in unchecked]
    assert not missing, "shown in the results chapter but not checked:\n" + "\n".join(missing)


def test_record_writes_only_under_the_runner(tmp_path, monkeypatch):
    from emocircuits.records import RESULTS_ENV, record

    monkeypatch.delenv(RESULTS_ENV, raising=False)
    assert record(a=1) == {"a": 1.0}
    path = tmp_path / "r.json"
    monkeypatch.setenv(RESULTS_ENV, str(path))
    record(a=np.float64(0.5))
    record(b=2)
    assert json.loads(path.read_text()) == {"a": 0.5, "b": 2.0}
    with pytest.raises(ValueError, match="expected a number"):
        record(c="high")
    assert record(auc=(np.float64(0.8), 0.7, 0.9)) == {"auc": 0.8, "auc_lo": 0.7, "auc_hi": 0.9}
    assert json.loads(path.read_text())["auc_hi"] == 0.9
    with pytest.raises(ValueError, match=r"an interval is \(estimate, low, high\), got 2 values"):
        record(auc=(0.8, 0.7))


def test_sizer_picks_one_value_per_run_size_and_rejects_quick_with_full(tmp_path):
    from emocircuits.records import executed_dir, html_dir, sizer

    assert [sizer(q, f)(1, 2, 3) for q, f in [(True, False), (False, False), (False, True)]] == [1, 2, 3]
    assert [sizer(q, f).name for q, f in [(True, False), (False, False), (False, True)]] == ["quick", "book", "full"]
    with pytest.raises(ValueError, match="QUICK=True and FULL=True"):
        sizer(True, True)
    assert [executed_dir(tmp_path, q, f).name for q, f in [(True, False), (False, False), (False, True)]] == \
        ["executed-quick", "executed", "executed-full"]
    assert html_dir(tmp_path, full=True).name == "html-full" and html_dir(tmp_path).name == "html"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_sample_sizes_go_through_the_size_knob(src):
    """Every chapter picks its sizes with ``size(quick, book, full)``: no chapter
    tests ``QUICK`` by itself, which would give FULL runs the book's sizes."""
    code = "\n".join(c.source for c in jupytext.read(src).cells
                     if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", []))
    lines = [ln for ln in code.splitlines() if "QUICK" in ln.split("#")[0] and "sizer(QUICK, FULL)" not in ln
             and not ln.lstrip().startswith("print(")]
    assert not lines, f"{src.name} branches on QUICK outside the size knob: {lines}"


def test_book_command_refuses_quick_with_full(capsys):
    from emocircuits.book import main

    with pytest.raises(SystemExit) as err:
        main(["--quick", "--full"])
    assert err.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_schedule_starts_the_longest_chapter_first_and_holds_back_a_reader(tmp_path):
    from emocircuits.book import next_chapter

    a, b, c, d = (tmp_path / f"{n}.py" for n in ("00_a", "01_b", "02_c", "03_d"))
    reads = {a: False, b: False, c: False, d: True}
    timings = {"00_a": 5, "01_b": 50, "02_c": 20, "03_d": 1}
    assert next_chapter([a, b, c, d], [], reads, timings) == b
    assert next_chapter([a, c, d], [b], reads, timings) == c
    assert next_chapter([a, c, d], [b], reads, {"00_a": 5}) == c, "a chapter never timed goes first (ties: by number)"
    assert next_chapter([d], [a], reads, timings) is None, "the reader waits while an earlier chapter runs"
    assert next_chapter([d], [], reads, timings) == d
    assert next_chapter([], [a, b], reads, timings) is None


def test_parallel_build_keeps_the_order_that_matters_and_names_a_failure(tmp_path):
    """Two chapters at a time: independent chapters overlap, a chapter reading
    the records waits for all earlier ones, and each kernel gets one CPU thread."""
    from emocircuits.book import ChapterError, build
    from emocircuits.records import recorded

    head = '# %% tags=["parameters"]\nMODEL = "x"\nQUICK = True\nFULL = False\nSEED = 0\n\n# %%\n'
    body = ("import os, time\nfrom emocircuits.records import record\nt0 = time.time()\ntime.sleep({s})\n"
            "record(start=t0, end=time.time(), threads=float(os.environ.get('OMP_NUM_THREADS', 0)))\n")
    nb = tmp_path / "notebooks"
    nb.mkdir()
    (nb / "00_a.py").write_text(head + body.format(s=2.5))
    (nb / "01_b.py").write_text(head + body.format(s=2.5))
    (nb / "02_c.py").write_text(head + body.format(s=0.3))
    (nb / "03_d.py").write_text(head + "from emocircuits.records import recorded, record\nimport time\n"
                                "record(n=len(recorded()), start=time.time())\n")
    executed = build(quick=True, model="x", root=tmp_path, render=False, jobs=2)
    rec = recorded(executed)
    a, b, c, d = (rec[k] for k in ("00_a", "01_b", "02_c", "03_d"))
    assert a["start"] < b["end"] and b["start"] < a["end"], "independent chapters overlap"
    assert c["start"] >= min(a["end"], b["end"]), "no more than two at a time"
    took = json.loads((executed / "timings.json").read_text())
    assert sorted(took) == ["00_a", "01_b", "02_c", "03_d"] and took["00_a"] >= 2.5 and took["02_c"] >= 0.3
    # the next build starts the chapters measured longest first, whatever their numbers
    (executed / "timings.json").write_text(json.dumps({"00_a": 10, "01_b": 1, "02_c": 99, "03_d": 1}))
    for name in ("00_a", "01_b", "02_c"):
        (nb / f"{name}.py").write_text(head + body.format(s=0.3))
    again = recorded(build(quick=True, model="x", root=tmp_path, render=False, jobs=2))
    assert again["01_b"]["start"] >= min(again["02_c"]["end"], again["00_a"]["end"]), "01_b, the shortest, waited"
    assert d["start"] >= max(a["end"], b["end"], c["end"]) and d["n"] == 3, "the reader waits for every earlier one"
    assert a["threads"] == b["threads"] == 1
    (nb / "02_c.py").write_text(head + "raise ValueError('broken on purpose')\n")
    with pytest.raises(ChapterError, match=r"chapter 02_c failed in cell .*ValueError: broken on purpose"):
        build(quick=True, model="x", root=tmp_path, render=False, jobs=2)


def _stage_one(tmp_path, nb, stem="05_x", records=None):
    """Stage one executed notebook (and its records) as the renderer would; returns the staged folder."""
    from emocircuits.records import recorded
    from emocircuits.staging import stage

    for name in ("_config.yml", "_toc.yml"):
        (tmp_path / name).write_text("")
    (tmp_path / "book").mkdir(exist_ok=True)
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run" / f"{stem}.ipynb").write_text(json.dumps(nb))
    if records is not None:
        (tmp_path / "run" / f"{stem}.results.json").write_text(json.dumps(records))
    stage(tmp_path, tmp_path / "run", tmp_path / "staged", recorded(tmp_path / "run"))
    return tmp_path / "staged"


def _nb(*cells):
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def test_rendered_pages_keep_printed_lines_as_a_front_end_shows_them_and_leave_out_progress_bars(tmp_path):
    """tqdm writes each update as its own stderr output starting with a carriage return: the staged page joins
    consecutive outputs of one stream, keeps the last state of each line, leaves progress bars out (a page is
    read, not watched) and keeps other stderr lines (a warning) and other outputs as they were."""
    figure = {"output_type": "display_data", "data": {"text/plain": "<Figure>"}, "metadata": {}}
    cell = {"cell_type": "code", "source": "train()", "metadata": {}, "execution_count": 1, "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["corpus: 3 texts\n"]},
        *({"output_type": "stream", "name": "stderr", "text": f"\rtrain: {100 * i // 3}%|##  | {i}/3 [00:0{i}<00:01, "
           f"2.{i}it/s]"} for i in range(4)),
        {"output_type": "stream", "name": "stderr", "text": "\n"},
        figure,
        {"output_type": "stream", "name": "stdout", "text": ["a\rb\n", "c\r\n"]},
        {"output_type": "stream", "name": "stderr", "text": "UserWarning: something to see\n"}]}
    nb = _nb(cell, {"cell_type": "markdown", "source": "text", "metadata": {}})
    page = json.loads((_stage_one(tmp_path, nb) / "notebooks" / "05_x.ipynb").read_text())
    assert page["cells"][0]["outputs"] == [
        {"output_type": "stream", "name": "stdout", "text": "corpus: 3 texts\n"},
        figure,
        {"output_type": "stream", "name": "stdout", "text": "b\nc\n"},
        {"output_type": "stream", "name": "stderr", "text": "UserWarning: something to see\n"}]
    assert page["cells"][1] == nb["cells"][1]
    assert json.loads((tmp_path / "run" / "05_x.ipynb").read_text()) == nb  # the executed notebook is untouched


def test_a_figure_shown_in_a_chapter_is_described_in_words_and_the_page_gives_it_alt_text_and_a_caption(tmp_path):
    from IPython.core.interactiveshell import InteractiveShell
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from emocircuits.plots import setup_style

    shell = InteractiveShell.instance()
    try:
        setup_style()
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0.5, 0.9], label="smollm2-135m")
        ax.set(title="Probe AUROC by layer", xlabel="layer", ylabel="test AUROC")
        ax.legend()
        data, _ = shell.display_formatter.format(fig)
        plt.close(fig)
    finally:
        InteractiveShell.clear_instance()
    assert data["text/plain"] == "Probe AUROC by layer\ntest AUROC against layer; legend: smollm2-135m."
    shown = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0KGgo=", **data}}
    table = {"output_type": "display_data", "metadata": {}, "data": {"text/html": "<table></table>"}}
    own = {"mystnb": {"image": {"alt": "chosen by the chapter"}}}
    nb = _nb(*({"cell_type": "code", "source": "", "metadata": meta, "execution_count": 1, "outputs": outs}
               for meta, outs in (({}, [shown]), ({}, [shown, table]), (own, [shown]),
                                  ({}, [{**shown, "data": {**shown["data"], "text/plain": "<Figure size 1x1>"}}]))))
    cells = json.loads((_stage_one(tmp_path, nb) / "notebooks" / "05_x.ipynb").read_text())["cells"]
    alt = "Probe AUROC by layer. test AUROC against layer; legend: smollm2-135m."
    assert cells[0]["metadata"]["mystnb"] == {"image": {"alt": alt}, "figure": {"caption": "Probe AUROC by layer"}}
    assert cells[1]["metadata"]["mystnb"] == {"image": {"alt": alt}}  # a table in the cell: no figure around both
    assert cells[2]["metadata"]["mystnb"]["image"]["alt"] == "chosen by the chapter"
    assert "mystnb" not in cells[3]["metadata"]  # a figure shown without the book's style has no words to give


def test_the_landing_page_lists_this_builds_findings_its_figure_and_every_chapter_with_a_reading_time(tmp_path):
    from emocircuits.results import findings

    records = {"mean_drop_circuit": 0.95, "mean_drop_circuit_lo": 0.7, "mean_drop_circuit_hi": 1.0,
               "mean_drop_random": 0.1}
    shown = {"output_type": "display_data", "metadata": {},
             "data": {"image/png": "iVBORw0KGgo=", "text/plain": "Three papers\nPanel 1: share."}}
    nb = _nb({"cell_type": "markdown", "source": "# 04 · Emotion circuits\n" + "word " * 1500, "metadata": {}},
             {"cell_type": "code", "source": "", "metadata": {"tags": ["landing-figure"]}, "execution_count": 1,
              "outputs": [shown]})
    staged = _stage_one(tmp_path, nb, stem="04_emotion_circuits", records=records)
    text = (staged / "book" / "_findings.md").read_text()
    assert findings({"04_emotion_circuits": records}) == [
        "**Ablating circuits (chapter 04).** Mean-ablating an emotion's circuit removes 0.95 [0.70, 1.00] of the "
        "emotion signal on held-out prompts; as many random components of the same layers remove 0.10."]
    assert "- **Ablating circuits (chapter 04).**" in text and "0.95 [0.70, 1.00]" in text
    assert "```{figure} images/findings.png\n:alt: Three papers. Panel 1: share." in text
    assert (staged / "book" / "images" / "findings.png").read_bytes() == base64.b64decode("iVBORw0KGgo=")
    chapters = (staged / "book" / "_chapters.md").read_text()
    assert "| {doc}`04 · Emotion circuits </notebooks/04_emotion_circuits>` | about 10 min |" in chapters
    (tmp_path / "none").mkdir()
    empty = _stage_one(tmp_path / "none", _nb(), stem="00_x")
    assert "recorded no headline numbers" in (empty / "book" / "_findings.md").read_text()


def test_a_page_shows_one_parameters_cell_with_this_runs_values_and_folds_the_plumbing(tmp_path):
    def code(source, tags=(), outputs=()):
        return {"cell_type": "code", "source": source, "metadata": {"tags": list(tags)}, "execution_count": 1,
                "outputs": list(outputs)}

    figure = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0KGgo=",
                                                                        "text/plain": "A figure\nof something"}}
    printed = {"output_type": "stream", "name": "stdout", "text": "0.91\n"}
    cells = [code('MODEL = "smollm2-135m"\nQUICK = False  # True: fewer items\nSEED = 0', ["parameters"]),
             code('# Parameters\nQUICK = True\nMODEL = "gemma3-270m"\n', ["injected-parameters"]),
             code("import numpy as np\nfrom emocircuits import probes as P\nsetup_style()"),
             code("fit = P.fit_pair_probe(lm, pairs)\nprint(fit.best_layer)", outputs=[printed]),
             code("fig, ax = plt.subplots()\nax.plot(x)\nplt.show()", outputs=[figure]),
             code("record(auroc=fit.auroc)"),
             code("\n".join(f"x{i} = {i}" for i in range(8)), outputs=[printed]),
             code("\n".join(f"y{i} = {i}" for i in range(8)), ["show-input"], outputs=[printed])]
    page = json.loads((_stage_one(tmp_path, _nb(*cells)) / "notebooks" / "05_x.ipynb").read_text())["cells"]
    note, page = page[0], page[1:]  # a QUICK run on another model says so above its parameters
    assert note["cell_type"] == "markdown" and "built in QUICK mode, on fewer items" in note["source"]
    assert "and on `gemma3-270m`" in note["source"] and "prose are the published book's" in note["source"]
    assert page[0]["source"] == ("# this run's values (papermill's -p NAME VALUE sets them)\n"
                                 'MODEL = "gemma3-270m"\nQUICK = True  # True: fewer items\nSEED = 0')
    assert "remove-cell" in page[1]["metadata"]["tags"]
    folded = ["hide-input" in c["metadata"]["tags"] for c in page[2:]]
    assert folded == [True, False, True, True, True, False]  # set-up, a library call, a plot, record, long, asked
    from emocircuits.staging import run_note

    assert run_note({"MODEL": "smollm2-135m", "QUICK": False, "FULL": False}) == ""  # the published book: no note


def test_a_kernel_that_dies_before_its_first_reply_is_started_once_more(tmp_path, monkeypatch):
    """Two kernels started at once can be handed the same port; the loser dies before replying, having run
    nothing. The chapter then starts once more; any other failure, or a second death, is raised."""
    import papermill as pm

    from emocircuits import book

    src = tmp_path / "00_x.py"
    src.write_text('# %% tags=["parameters"]\nMODEL = "x"\n\n# %%\nfrom emocircuits.records import record\n'
                   'record(ran=1)\n')
    real, calls = pm.execute_notebook, []

    def flaky(*args, fail=("Kernel died before replying to kernel_info",), **kwargs):
        calls.append(1)
        if len(calls) <= len(fail):
            raise RuntimeError(fail[len(calls) - 1])
        return real(*args, **kwargs)

    monkeypatch.setattr(pm, "execute_notebook", flaky)
    _, ran = book.run_chapter(src, tmp_path / "a", {"MODEL": "x"}, code_hash="t")
    assert ran and len(calls) == 2 and json.loads((tmp_path / "a" / "00_x.results.json").read_text()) == {"ran": 1}
    for fail in (("Kernel died before replying to kernel_info",) * 2, ("something else",)):
        calls.clear()
        monkeypatch.setattr(pm, "execute_notebook", lambda *a, f=fail, **k: flaky(*a, fail=f, **k))
        with pytest.raises(RuntimeError, match=fail[-1]):
            book.run_chapter(src, tmp_path / f"b{len(fail)}", {"MODEL": "x"}, code_hash="t")
        assert len(calls) == len(fail)


def _functions_reading_state(tree: ast.Module) -> set[str]:
    """Top-level functions of a chapter that read a name they were not passed: not a parameter, a local, an
    import, a builtin or another of the chapter's functions."""
    import builtins

    imported = {(a.asname or a.name).split(".")[0] for n in ast.walk(tree)
                if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    known = imported | set(dir(builtins)) | {f.name for f in funcs}
    out = set()
    for fn in funcs:
        bound = set()
        for node in ast.walk(fn):
            if isinstance(node, (ast.FunctionDef, ast.Lambda)):
                a = node.args
                bound |= {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x}
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                bound.add(node.id)
        loaded = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        if loaded - bound - known:
            out.add(fn.name)
    return out


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_chapter_functions_read_only_what_they_are_passed(src):
    """A chapter's function reads its arguments, not the notebook's variables: what it needs is passed, or bound
    where the chapter makes it (``functools.partial``), so it can be read, tested and moved on its own."""
    got = _functions_reading_state(ast.parse(src.read_text()))
    assert not got, f"{src.name}: functions reading notebook variables they were not passed: {sorted(got)}"


def test_the_state_check_sees_a_function_that_reads_a_notebook_variable():
    tree = ast.parse("import numpy as np\nSEED = 0\n\ndef ok(x, seed):\n    return np.mean(x) + seed\n\n"
                     "def bad(x):\n    return x + SEED\n")
    assert _functions_reading_state(tree) == {"bad"}
