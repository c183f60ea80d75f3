"""Notebook pairs stay in sync, carry no outputs, have parameters, and run (QUICK)."""

from __future__ import annotations

import json
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
def test_parameters_cell(src):
    nb = jupytext.read(src)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{src.name} needs exactly one cell tagged 'parameters'"
    for name in ("MODEL", "QUICK", "SEED"):
        assert f"{name} =" in params[0].source, f"{src.name}: parameters cell lacks {name}"


def test_chapter_00_runs_quick_and_shows_real_output(tmp_path):
    from emocircuits.book import run_chapter

    out, ran = run_chapter(ROOT / "notebooks" / "00_setup.py", tmp_path,
                           {"MODEL": "smollm2-135m", "QUICK": True, "SEED": 0}, code_hash="test")
    assert ran
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    import re

    diff = float(re.search(r"over layers 0\.\.28: ([0-9.e+-]+)", text).group(1))
    assert diff < 1e-4
    assert "after the final norm" in text and "alpha = +0.00" in text
    assert len(images) >= 1
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    # a second run with nothing changed is skipped
    _, ran_again = run_chapter(ROOT / "notebooks" / "00_setup.py", tmp_path,
                               {"MODEL": "smollm2-135m", "QUICK": True, "SEED": 0}, code_hash="test")
    assert not ran_again


def test_failing_chapter_names_chapter_and_cell(tmp_path):
    from emocircuits.book import ChapterError, run_chapter

    bad = tmp_path / "99_broken.py"
    bad.write_text('# %% tags=["parameters"]\nMODEL = "x"\nQUICK = True\nSEED = 0\n\n# %%\nx = 1\n\n# %%\n'
                   'raise RuntimeError("boom")\n')
    with pytest.raises(ChapterError, match=r"chapter 99_broken failed in cell .*RuntimeError: boom"):
        run_chapter(bad, tmp_path / "out", {"MODEL": "x", "QUICK": True, "SEED": 0}, code_hash="t")
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # nothing half-written


@pytest.mark.parametrize("stem", ["01_datasets", "02_measuring"])
def test_chapter_runs_quick_without_errors(stem, tmp_path):
    """Chapters 01-02 in QUICK mode (03 and later run in `make book`, too slow for CI)."""
    from emocircuits.book import run_chapter

    out, ran = run_chapter(ROOT / "notebooks" / f"{stem}.py", tmp_path,
                           {"MODEL": "smollm2-135m", "QUICK": True, "SEED": 0}, code_hash="test")
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert ran and outputs
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert [o for o in outputs if "image/png" in o.get("data", {})]


EXPECTED = sorted((ROOT / "tests" / "expected").glob("*.quick.json"))


@pytest.mark.parametrize("expected", EXPECTED, ids=lambda p: p.name.split(".")[0])
def test_chapter_headline_numbers_within_tolerance(expected, tmp_path):
    """Regression: a QUICK run's recorded headline numbers stay near the stored ones."""
    from emocircuits.book import results_path, run_chapter

    stem = expected.name.split(".")[0]
    out, _ = run_chapter(ROOT / "notebooks" / f"{stem}.py", tmp_path,
                         {"MODEL": "smollm2-135m", "QUICK": True, "SEED": 0}, code_hash="test")
    nb = nbformat.read(out, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    got = json.loads(results_path(tmp_path, stem).read_text())
    want = {k: v for k, v in json.loads(expected.read_text()).items() if not k.startswith("_")}
    drift = [f"{stem}: {k} = {got.get(k)} (expected {v} +- {tol})" for k, (v, tol) in want.items()
             if got.get(k) is None or abs(got[k] - v) > tol]
    assert not drift, "headline numbers drifted:\n" + "\n".join(drift)
    if stem == "04_emotion_circuits":  # the causal claim itself, not only its stability
        assert got["mean_drop_circuit"] > 3 * got["mean_drop_random"]
        assert got["modulation_accuracy"] > got["plain_accuracy"]
    if stem == "05_attribution_graphs":  # exact edges and a dictionary that explains something
        assert got["graph_check"] < 1e-3
        assert got["fve_mean"] > 0.2  # an untrained dictionary explains nothing (<= 0)


def test_record_writes_only_under_the_runner(tmp_path, monkeypatch):
    from emocircuits.book import RESULTS_ENV, record

    monkeypatch.delenv(RESULTS_ENV, raising=False)
    assert record(a=1) == {"a": 1.0}
    path = tmp_path / "r.json"
    monkeypatch.setenv(RESULTS_ENV, str(path))
    record(a=np.float64(0.5))
    record(b=2)
    assert json.loads(path.read_text()) == {"a": 0.5, "b": 2.0}
    with pytest.raises(ValueError, match="expected a number"):
        record(c="high")
