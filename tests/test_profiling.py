"""Where a chapter's time goes: the phase counters, their tokens, and the build's profile."""

import json
import time

import pytest

from emocircuits import profiling


def _diff(before: dict, after: dict) -> dict:
    return {"seconds": {p: after["seconds"][p] - before["seconds"][p] for p in profiling.PHASES},
            **{k: after[k] - before[k] for k in ("generated_tokens", "forward_tokens")}}


def test_a_phase_inside_another_is_counted_once_in_the_inner_phase():
    before = profiling.snapshot()
    with profiling.phase("generation"):
        time.sleep(0.2)
        with profiling.phase("judging"):
            time.sleep(0.3)
    d = _diff(before, profiling.snapshot())
    assert 0.3 <= d["seconds"]["judging"] < 0.5
    assert 0.2 <= d["seconds"]["generation"] < 0.3 + 0.15, "the inner phase's time is not counted twice"
    with pytest.raises(ValueError, match="phase 'decoding': expected one of generation, capture"):
        profiling.phase("decoding").__enter__()
    with pytest.raises(ValueError, match="expected one of"):
        profiling.timed("sampling")


def test_generation_and_capture_count_the_tokens_they_ran(smol):
    from emocircuits.activations import capture
    from emocircuits.generation import generate

    before = profiling.snapshot()
    ids = generate(smol, ["Say hi.", "Name a colour, then describe it at length."], max_new_tokens=6,
                   return_ids=True)
    d = _diff(before, profiling.snapshot())
    assert d["generated_tokens"] == sum(len(r) for r in ids) > 0
    assert d["seconds"]["generation"] > 0 and d["forward_tokens"] == 0

    texts = ["A short one.", "A somewhat longer text than the first one, to pad the batch."]
    before = profiling.snapshot()
    capture(smol, texts, "resid_post.3", progress=False)
    d = _diff(before, profiling.snapshot())
    assert d["forward_tokens"] == int(smol.encode(texts)["attention_mask"].sum())
    assert d["seconds"]["capture"] > 0 and d["generated_tokens"] == 0


def test_the_build_adds_up_what_a_chapter_and_a_process_it_starts_measured(tmp_path):
    """A chapter's kernel and a CLI-like process it starts both write their counters; the build adds them
    up per chapter beside its wall time, and the rest of the wall time is `other`."""
    from emocircuits.book import build, profile_table

    head = '# %% tags=["parameters"]\nMODEL = "x"\nQUICK = True\nFULL = False\nSEED = 0\n\n# %%\n'
    body = ("import subprocess, sys, time\nfrom emocircuits import profiling\n"
            "with profiling.phase('judging'):\n    time.sleep(0.5)\n"
            "subprocess.run([sys.executable, '-c', 'import time\\nfrom emocircuits import profiling\\n"
            "with profiling.phase(\"training\"):\\n    time.sleep(0.4)\\nprofiling.count(generated=7)'], check=True)\n")
    nb = tmp_path / "notebooks"
    nb.mkdir()
    (nb / "00_a.py").write_text(head + body)
    executed = build(quick=True, model="x", root=tmp_path, render=False, jobs=1)
    prof = json.loads((executed / "profile.json").read_text())
    ch = prof["chapters"]["00_a"]
    assert ch["seconds"]["judging"] >= 0.5 and ch["seconds"]["training"] >= 0.4
    assert ch["generated_tokens"] == 7 and ch["forward_tokens"] == 0
    assert ch["seconds"]["other"] == pytest.approx(ch["wall_s"] - sum(ch["seconds"][p] for p in profiling.PHASES),
                                                   abs=0.2) and ch["seconds"]["other"] > 0
    assert prof["reference"] is None, "no reference without a rendered build"
    assert not list(executed.glob(".00_a.profile*")), "the processes' files are collected and removed"
    assert "00_a" in profile_table(prof)


def test_the_reference_figure_is_plain_generation_of_a_fixed_size():
    from emocircuits.generation import reference_speed

    ref = reference_speed(n_prompts=2, new_tokens=4)
    assert ref["model"] == "smollm2-135m" and ref["prompts"] * ref["new_tokens"] == 8
    assert ref["tokens_per_s"] == pytest.approx(8 / ref["seconds"]) and ref["tokens_per_s"] > 0


def test_the_rendered_build_records_the_fixed_yardstick_beside_its_chapters(quick_book):
    """A rendered build measures the machine as it runs a chapter (one thread, a process of its own) with the
    fixed yardstick, 8 prompts of 32 new tokens, and writes it beside the chapters' profiles."""
    import json

    ref = json.loads((quick_book.executed / "profile.json").read_text())["reference"]
    assert ref["model"] == "smollm2-135m" and ref["threads"] == 1 and (ref["prompts"], ref["new_tokens"]) == (8, 32)
    assert ref["tokens_per_s"] == pytest.approx(256 / ref["seconds"]) and ref["tokens_per_s"] > 0


def test_the_bench_reads_the_books_generation_speed_against_the_same_builds_reference(tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_capture import book_generation_item

    missing = book_generation_item(tmp_path)
    assert missing["ratio"] is None and "make book" in capsys.readouterr().out
    prof = {"reference": {"tokens_per_s": 80.0, "seconds": 3.2},
            "chapters": {"04_x": {"generated_tokens": 600, "seconds": {"generation": 10.0}},
                         "06_y": {"generated_tokens": 1400, "seconds": {"generation": 30.0}},
                         "05_z": {"generated_tokens": 9999, "seconds": {"generation": 1.0}, "ran": False}}}
    (tmp_path / "profile.json").write_text(json.dumps(prof))
    item = book_generation_item(tmp_path)
    assert item["b"]["tok_s"] == pytest.approx(50.0) and item["ratio"] == pytest.approx(50 / 80)
    assert item["met"] is False and item["target"] == "ratio >= 0.8"
