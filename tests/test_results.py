"""The results chapter's tables: recorded numbers in, the papers' beside them, nothing invented."""

from __future__ import annotations

import json

import pytest

from emocircuits import book
from emocircuits import results as R


def test_comparison_puts_each_recorded_number_with_its_interval_and_baseline():
    rec = {"04_emotion_circuits": {"modulation_accuracy": 0.6667, "modulation_accuracy_lo": 0.4,
                                   "modulation_accuracy_hi": 0.9, "plain_accuracy": 0.17,
                                   "modulation_coherent": 0.89}}
    t = R.comparison(rec)
    assert set(t) == {"A", "B", "C", "judges"}
    b = t["B"].set_index("measurement")
    row = b.loc["emotion control by circuit modulation"]
    assert row["paper"] == "99.65%"
    assert row["this book [95% CI]"] == "0.67 [0.40, 0.90]"
    assert row["baseline"] == "no intervention: 0.17; coherent share 0.89"
    # a baseline recorded with its interval shows it, as the measured number does
    ablation = R.comparison({"04_emotion_circuits": {"mean_drop_circuit": 0.95, "mean_drop_circuit_lo": 0.9,
                                                     "mean_drop_circuit_hi": 1.0, "mean_drop_random": 0.1,
                                                     "mean_drop_random_lo": 0.05, "mean_drop_random_hi": 0.2}})
    row = ablation["B"].set_index("measurement").loc[
        "mean-ablating the circuit: share of the emotion signal removed"]
    assert row["this book [95% CI]"] == "0.95 [0.90, 1.00]"
    assert row["baseline"] == "as many random components: 0.10 [0.05, 0.20]"
    # recorded without an interval or a baseline: shown as recorded, the missing baseline said so
    steer = R.comparison({"04_emotion_circuits": {"steering_accuracy": 0.25}})["B"].set_index("measurement")
    assert steer.loc["emotion control by steering vectors", "this book [95% CI]"] == "0.25"
    assert steer.loc["emotion control by steering vectors", "baseline"] == R.NOT_RUN
    # a count or a strength keeps its own number of decimals beside two-decimal shares
    grid = R.comparison({"06_steering": {"paper_a_grid_best": 0.33, "paper_a_grid_best_chance": 0.162,
                                         "paper_a_grid_best_coherent": 0.958, "paper_a_grid_best_alpha": 20.0}})
    a = grid["A"].set_index("measurement")
    cell = a.loc[a.index.str.startswith("steering on paper A's own grid"), "baseline"].iat[0]
    assert cell == "chance 0.16; coherent share 0.96; at |alpha| 20"
    # nothing recorded: every row says so, none is filled in
    empty = R.comparison({})
    assert all((df["this book [95% CI]"] == R.NOT_RUN).all() for df in empty.values())
    with pytest.raises(TypeError, match="recorded must be a dict"):
        R.comparison([("04_emotion_circuits", {})])


def test_every_row_reads_a_number_its_chapter_records():
    """A row whose key no chapter records would always say 'not run': each key appears in its chapter."""
    from emocircuits.book import ROOT

    for row in R.ROWS:
        src = (ROOT / "notebooks" / f"{row.chapter}.py").read_text()
        stem = row.key.removesuffix("_empathy").removesuffix("_coherent")
        assert row.key in src or stem.startswith("clamp_"), f"{row.chapter} never records {row.key}"


def test_recorded_reads_the_build_folder_and_a_reader_reruns_when_records_change(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "03_probes.results.json").write_text(json.dumps({"auroc_response": 0.99}))
    assert book.recorded(out) == {"03_probes": {"auroc_response": 0.99}}
    monkeypatch.setenv(book.RESULTS_ENV, str(out / ".07_results.results.json"))
    assert book.recorded() == {"03_probes": {"auroc_response": 0.99}}
    with pytest.raises(NotADirectoryError, match="expected a build folder"):
        book.recorded(out / "03_probes.results.json")
    monkeypatch.delenv(book.RESULTS_ENV)

    reader = tmp_path / "07_results.py"
    reader.write_text('# %% tags=["parameters"]\nMODEL = "x"\nQUICK = True\nSEED = 0\n\n# %%\n'
                      'from emocircuits.book import recorded, record\n'
                      'record(seen=recorded()["03_probes"]["auroc_response"])\n')
    params = {"MODEL": "x", "QUICK": True, "SEED": 0}
    _, ran = book.run_chapter(reader, out, params, code_hash="t")
    assert ran and json.loads((out / "07_results.results.json").read_text()) == {"seen": 0.99}
    assert book.run_chapter(reader, out, params, code_hash="t")[1] is False  # nothing changed: reused
    (out / "03_probes.results.json").write_text(json.dumps({"auroc_response": 0.5}))
    _, ran = book.run_chapter(reader, out, params, code_hash="t")
    assert ran and json.loads((out / "07_results.results.json").read_text()) == {"seen": 0.5}


def test_results_chapter_of_the_quick_book_shows_the_recorded_numbers(quick_book):
    """End to end: the rendered table carries chapter 04's recorded modulation accuracy, formatted."""
    import nbformat

    rec = book.recorded(quick_book.executed)
    assert {"03_probes", "04_emotion_circuits", "05_attribution_graphs", "06_steering"} <= set(rec)
    nb = nbformat.read(quick_book.executed / "07_results.ipynb", as_version=4)
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    m = rec["04_emotion_circuits"]
    want = f"{m['modulation_accuracy']:.2f} [{m['modulation_accuracy_lo']:.2f}, {m['modulation_accuracy_hi']:.2f}]"
    assert want in html
    assert "99.65%" in html and "4.53" in html
