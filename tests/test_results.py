"""The results chapter's tables: recorded numbers in, the papers' beside them, nothing invented."""

from __future__ import annotations

import ast
import math
import html as htmllib
import json
import re

import pytest

from emocircuits import book, records
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


def _clamp_row(v: str) -> str:
    """The results table's label of paper C's clamp at value ``v``."""
    return f"judged empathy, each situation's circuit clamped to {v} at the prompt's final token (1-5)"


def _clamp_keys(src: str) -> set[str]:
    """The clamp numbers chapter 05 records, read from its source: each condition name it builds (at every size,
    QUICK to FULL), through the chapter's own slug rule, into each f-string key of its ``record(**{...})`` call."""
    tree = ast.parse(src)

    def ev(expr, **names):
        return eval(compile(ast.Expression(expr), "<chapter 05>", "eval"), {}, names)

    def sets_condition(node):  # conditions[...] = ...
        return (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript)
                and getattr(node.targets[0].value, "id", None) == "conditions")

    names, slug_rule, key_exprs = set(), None, []
    for node in ast.walk(tree):
        if (isinstance(node, ast.For) and isinstance(node.iter, ast.Call)
                and getattr(node.iter.func, "id", None) == "size"):
            values = {x for arg in node.iter.args for x in ast.literal_eval(arg)}  # one tuple per size
            names |= {ev(stmt.targets[0].slice, **{node.target.id: x})
                      for stmt in node.body if sets_condition(stmt) for x in values}
        elif sets_condition(node) and isinstance(node.targets[0].slice, ast.Constant):
            names.add(node.targets[0].slice.value)
        elif isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "slug":
            slug_rule = node.value
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "record":
            key_exprs += [(k, _is_interval(v)) for kw in node.keywords
                          if kw.arg is None and isinstance(kw.value, ast.Dict)
                          for k, v in zip(kw.value.keys, kw.value.values) if isinstance(k, ast.JoinedStr)]
    assert names and slug_rule is not None and key_exprs, "chapter 05 builds its clamp keys another way: update this"
    keys = {(ev(k, slug=ev(slug_rule, name=n)), interval) for n in names for k, interval in key_exprs}
    # record() writes an estimate given with its interval, (est, lo, hi), as key, key_lo and key_hi
    return {name + end for name, interval in keys for end in (("", "_lo", "_hi") if interval else ("",))}


def _is_interval(value: ast.expr) -> bool:
    """Whether a recorded value is written as an interval: a 3-tuple, or ``tuple(...)`` of one."""
    return (isinstance(value, ast.Tuple) and len(value.elts) == 3) or (
        isinstance(value, ast.Call) and getattr(value.func, "id", None) == "tuple")


def test_every_row_reads_a_number_its_chapter_records():
    """A row whose key no chapter records would always say 'not run': each key is recorded by its chapter, as a
    keyword or a string of its own (not inside a longer name); chapter 05's clamp keys, which it builds with
    f-strings, are among those its conditions give, and so are the clamp numbers in their baseline cells."""
    from emocircuits.book import ROOT

    clamp = _clamp_keys((ROOT / "notebooks" / "05_attribution_graphs.py").read_text())
    assert {"clamp_circuit_1000_empathy", "clamp_circuit_4x_coherent", "clamp_control_100_empathy_lo"} <= clamp
    for row in R.ROWS:
        src = (ROOT / "notebooks" / f"{row.chapter}.py").read_text()
        for key in (row.key, *row.baseline.keys):
            if key.startswith("clamp_"):
                assert row.chapter == "05_attribution_graphs" and key in clamp, f"{row.chapter} never records {key}"
            elif key == row.key:
                k = re.escape(key)
                assert re.search(rf"(?<![\w\"']){k}\s*=(?!=)|[\"']{k}[\"']", src), f"{row.chapter} never records {key}"


def test_paper_rows_put_the_papers_number_beside_the_record_or_the_not_run_marker():
    """Paper B's and C's own numbers sit beside what the chapter recorded for the same setting; a setting the
    build did not run says so, with an empty baseline, and is never filled from the paper."""
    rec = {"04_emotion_circuits": {"modulation_accuracy": 0.625, "modulation_accuracy_lo": 0.375,
                                   "modulation_accuracy_hi": 0.875, "plain_accuracy": 0.125,
                                   "modulation_coherent": 0.75},
           "05_attribution_graphs": {"empathy_unmodified": 3.276, "empathy_unmodified_lo": 2.523,
                                     "empathy_unmodified_hi": 3.931, "coherent_unmodified": 1.0,
                                     "clamp_circuit_100_empathy": 2.9227, "clamp_circuit_100_empathy_lo": 2.8633,
                                     "clamp_circuit_100_empathy_hi": 2.9744, "clamp_circuit_100_coherent": 0.0}}
    t = R.comparison(rec)
    b = t["B"].set_index("measurement")
    assert b.loc["emotion control by circuit modulation", "paper"] == f"{R.PAPER_B_CONTROL['modulation']:.2%}"
    assert b.loc["emotion control by circuit modulation", "this book [95% CI]"] == "0.62 [0.38, 0.88]"
    for how in ("prompting", "steering"):
        (label,) = [m for m in b.index if m.startswith(f"emotion control by {how}")]
        assert b.loc[label, "paper"] == f"{R.PAPER_B_CONTROL[how]:.2%}"
        assert b.loc[label, "this book [95% CI]"] == R.NOT_RUN and b.loc[label, "baseline"] == ""
    c = t["C"].set_index("measurement")
    unmod = c.loc["judged empathy, unmodified (1-5)"]
    assert (unmod["paper"], unmod["this book [95% CI]"], unmod["baseline"]) == (
        "4.07", "3.28 [2.52, 3.93]", "coherent share 1.00")
    for v, theirs in R.PAPER_C_CLAMP.items():
        if v == "unmodified":
            continue
        row = c.loc[_clamp_row(v)]
        assert row["paper"] == f"{theirs:.2f}"
        if v == "100":
            assert row["this book [95% CI]"] == "2.92 [2.86, 2.97]"
            assert row["baseline"] == "unmodified 3.28 [2.52, 3.93]; coherent share 0.00"
        else:
            assert (row["this book [95% CI]"], row["baseline"]) == (R.NOT_RUN, ""), v
    # recorded without its coherent share: the measured number shows, the baseline says it was not run
    part = R.comparison({"05_attribution_graphs": {"clamp_circuit_10_empathy": 3.5, "empathy_unmodified": 3.0}})
    row = part["C"].set_index("measurement").loc[_clamp_row("10")]
    assert (row["this book [95% CI]"], row["baseline"]) == ("3.50", R.NOT_RUN)


def test_recorded_reads_the_build_folder_and_a_reader_reruns_when_records_change(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "03_probes.results.json").write_text(json.dumps({"auroc_response": 0.99}))
    assert records.recorded(out) == {"03_probes": {"auroc_response": 0.99}}
    monkeypatch.setenv(records.RESULTS_ENV, str(out / ".07_results.results.json"))
    assert records.recorded() == {"03_probes": {"auroc_response": 0.99}}
    with pytest.raises(NotADirectoryError, match="expected a build folder"):
        records.recorded(out / "03_probes.results.json")
    monkeypatch.delenv(records.RESULTS_ENV)

    reader = tmp_path / "07_results.py"
    reader.write_text('# %% tags=["parameters"]\nMODEL = "x"\nQUICK = True\nSEED = 0\n\n# %%\n'
                      'from emocircuits.records import recorded, record\n'
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

    rec = records.recorded(quick_book.executed)
    assert {"03_probes", "04_emotion_circuits", "05_attribution_graphs", "06_steering"} <= set(rec)
    nb = nbformat.read(quick_book.executed / "07_results.ipynb", as_version=4)
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    m = rec["04_emotion_circuits"]
    want = f"{m['modulation_accuracy']:.2f} [{m['modulation_accuracy_lo']:.2f}, {m['modulation_accuracy_hi']:.2f}]"
    assert want in html
    # every row of every table, cell by cell, is what the comparison makes of the numbers the chapters recorded
    shown = _rendered_rows(html)
    tables = R.comparison(rec)
    for paper, df in tables.items():
        for row in df.drop(columns="chapter").values.tolist():
            assert [str(x).strip() for x in row] in shown, f"paper {paper}: {row[0]!r} is not shown as recorded"
    # paper C's clamp rows: the ones the QUICK run made show their number and interval, the others the marker
    c = tables["C"].set_index("measurement")
    five = rec["05_attribution_graphs"]
    ran = [v for v in R.PAPER_C_CLAMP if v != "unmodified" and f"clamp_circuit_{v}_empathy" in five]
    assert ran and len(ran) < len(R.PAPER_C_CLAMP) - 1  # QUICK clamps at some of paper C's values, not all
    for v in R.PAPER_C_CLAMP:
        if v == "unmodified":
            continue
        cell = c.loc[_clamp_row(v), "this book [95% CI]"]
        if v in ran:
            k = f"clamp_circuit_{v}_empathy"
            assert cell == f"{five[k]:.2f} [{five[k + '_lo']:.2f}, {five[k + '_hi']:.2f}]"
        else:
            assert cell == R.NOT_RUN


def _rendered_rows(html: str) -> list[list[str]]:
    """The text of each table row's cells in a notebook's HTML output (tags dropped, entities decoded)."""
    cells = (re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S) for tr in re.findall(r"<tr>(.*?)</tr>", html, re.S))
    rows = ([htmllib.unescape(re.sub(r"<[^>]+>", "", td)).strip() for td in row] for row in cells)
    return [r for r in rows if r]


def test_a_finding_appears_only_with_its_numbers_and_its_wording_follows_them():
    from emocircuits.results import findings

    probe = {"auroc_response": 1.0, "random_p95_response": 0.86, "matched_auroc": 0.91, "bow_matched_auroc": 0.88}
    apart = {**probe, "graded_task_auroc": 0.94, "graded_task_auroc_lo": 0.90, "graded_task_auroc_hi": 0.97,
             "graded_dismissive_auroc": 0.60, "graded_dismissive_auroc_lo": 0.52, "graded_dismissive_auroc_hi": 0.68}
    (text,) = findings({"03_probes": apart})
    assert ("task-only replies at 0.94 [0.90, 0.97] and above dismissive ones at 0.60 [0.52, 0.68]: it reads person "
            "against task more than warm against cold.") in text
    close = {**apart, "graded_dismissive_auroc_hi": 0.92}
    assert findings({"03_probes": close}) == [text.replace(
        ": it reads person against task more than warm against cold", "").replace(
        "0.60 [0.52, 0.68]", "0.60 [0.52, 0.92]")]
    assert findings({"03_probes": {**probe, "graded_task_auroc": 0.9}}) == []  # a number missing: no sentence
    with pytest.raises(TypeError, match="recorded must be a dict"):
        findings([apart])


def test_recorded_numbers_read_by_chapter_and_key_for_the_results_page():
    records = {"03_probes": {"auroc": 0.9, "auroc_lo": 0.8, "auroc_hi": 0.95, "layer": 12.0}}
    assert R.recorded_text(records, "03_probes", "auroc") == "0.90 [0.80, 0.95]"
    assert R.recorded_text(records, "03_probes", "layer", digits=0) == "12"
    assert R.recorded_text(records, "06_steering", "share") == "not run"
    assert R.recorded_triple(records, "03_probes", "auroc") == (0.9, 0.8, 0.95)
    assert R.recorded_triple(records, "03_probes", "layer") == (12.0, 12.0, 12.0)
    assert all(math.isnan(x) for x in R.recorded_triple(records, "03_probes", "missing"))
