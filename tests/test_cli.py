"""The `emocircuits` command, run in-process and as an installed script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emocircuits.cli import main


def test_models_lists_both_bundled_models_as_installed(capsys, smol, gemma):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    for name in ["smollm2-135m", "gemma3-270m"]:
        assert "yes" in lines[name] and "bundled" in lines[name]
    assert "(default)" in lines["smollm2-135m"]
    assert "google/gemma-2-2b" in lines["gemma-2-2b"]
    assert lines["smollm2-135m"].split()[2:5] == ["llama", "30", "576"]
    assert lines["phi-3-mini-4k-instruct"].split()[2] == "phi3" and lines["gemma-2-2b"].split()[2] == "gemma"


def test_generate_prints_a_reply(capsys, smol):
    assert main(["generate", "--model", "smollm2-135m", "--prompt", "My dog died.", "--max-new-tokens", "20"]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.split()) >= 3
    # greedy decoding: the same reply as the library call
    from emocircuits.generation import generate

    assert out == generate(smol, ["My dog died."], max_new_tokens=20)[0]


def test_generate_with_system_and_sampling_is_seeded(capsys, smol):
    args = ["generate", "--prompt", "Tell me a story.", "--system", "You are gloomy.", "--temperature", "0.9",
            "--max-new-tokens", "12"]
    outs = []
    for seed in ("7", "7", "8"):
        assert main(args + ["--seed", seed]) == 0
        outs.append(capsys.readouterr().out.strip())
    assert outs[0] and outs[1] == outs[0]  # the same seed: the same sampled reply
    assert outs[2] != outs[0]  # another seed samples another reply


def test_unknown_model_is_an_error_with_the_known_names(capsys):
    assert main(["generate", "--model", "nope", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nope'" in err and "smollm2-135m" in err


def test_bad_max_new_tokens_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "hi", "--max-new-tokens", "0"])
    assert "expected a positive integer, got '0'" in capsys.readouterr().err


def test_installed_script_runs():
    exe = Path(sys.executable).parent / "emocircuits"
    assert exe.exists(), "the package is not installed with its console script"
    out = subprocess.run([str(exe), "models"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "smollm2-135m" in out.stdout


# ---------------------------------------------------------------------------
# bad input: exit code 2, the input named on stderr with what is accepted, no output written


def _probe(folder, model="smollm2-135m", layers=(3, 5)):
    """A probe folder in `emocircuits probe`'s format, written directly (no model run)."""
    from emocircuits.probes import PairProbe, save_probe

    dirs = {la: np.full(576, 1 / 24.0) for la in layers}
    save_probe(PairProbe(model, "mean_all", "resid_post", list(layers), dirs, {la: 0.0 for la in layers},
                         {"best_layer": layers[0]}), folder)
    return folder


@pytest.fixture
def no_model_load(monkeypatch):
    """These inputs are refused before a model is loaded."""
    from emocircuits import models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded for input that should have been refused first")

    monkeypatch.setattr(models, "load_model", refuse)


def _run(tmp_path, capsys, command, **paths):
    out = tmp_path / "out.jsonl"
    src = tmp_path / "in.jsonl"
    if not src.exists():
        src.write_text('{"id": 1, "text": "Hello.", "prompt": "Hello."}\n')
    args = {"score": ["score", "--texts", str(src)], "steer": ["steer", "--alpha", "1", "--prompts", str(src)]}
    rc = main(args[command] + ["--probe", str(paths["probe"]), "--out", str(out), *paths.get("extra", [])])
    return rc, capsys.readouterr().err, out


@pytest.mark.parametrize("command", ["score", "steer"])
def test_a_layer_the_probe_lacks_is_refused(tmp_path, capsys, no_model_load, command):
    probe = _probe(tmp_path / "probe")
    rc, err, out = _run(tmp_path, capsys, command, probe=probe, extra=["--layer", "7"])
    assert rc == 2
    assert f"--layer 7: the probe in {probe} has layers [3, 5]" in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["score", "steer"])
def test_a_probe_fitted_on_another_model_is_refused(tmp_path, capsys, no_model_load, command):
    probe = _probe(tmp_path / "probe", model="gemma3-270m")
    rc, err, out = _run(tmp_path, capsys, command, probe=probe)
    assert rc == 2
    assert f"--probe {probe}: fitted on 'gemma3-270m', not on --model 'smollm2-135m'" in err
    assert "pass --model gemma3-270m" in err
    assert not out.exists()


@pytest.mark.parametrize("state", ["missing", "empty", "blank lines"])
@pytest.mark.parametrize("command, field", [("judge", "text"), ("score", "text"), ("steer", "prompt")])
def test_a_missing_or_empty_texts_or_prompts_file_is_refused(tmp_path, capsys, no_model_load, command, field, state):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    if state != "missing":
        src.write_text("" if state == "empty" else "\n  \n")
    probe = ["--probe", str(_probe(tmp_path / "probe"))]
    args = {"judge": ["judge", "--texts", str(src)], "score": ["score", "--texts", str(src), *probe],
            "steer": ["steer", "--alpha", "1", "--prompts", str(src), *probe]}[command]
    assert main(args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{src}: {'no such file' if state == 'missing' else 'no records'}; expected a UTF-8 JSONL file" in err
    assert f"a string '{field}'" in err
    assert not out.exists()


@pytest.mark.parametrize("state, msg", [("missing", "no such file"), ("empty", "no records")])
def test_a_missing_or_empty_pairs_file_is_refused(tmp_path, capsys, no_model_load, state, msg):
    pairs, out = tmp_path / "pairs.jsonl", tmp_path / "probe"
    if state == "empty":
        pairs.write_text("")
    assert main(["probe", "--pairs", str(pairs), "--out", str(out)]) == 2
    assert f"{pairs}: {msg}" in capsys.readouterr().err
    assert not out.exists()
