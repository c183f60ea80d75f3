"""The `emocircuits` command, run in-process and as an installed script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    assert lines["smollm2-135m"].split()[2:4] == ["30", "576"]


def test_generate_prints_a_reply(capsys, smol):
    assert main(["generate", "--model", "smollm2-135m", "--prompt", "My dog died.", "--max-new-tokens", "20"]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.split()) >= 3
    # greedy decoding: the same reply as the library call
    from emocircuits.steering import generate

    assert out == generate(smol, ["My dog died."], max_new_tokens=20)[0]


def test_generate_with_system_and_sampling_is_seeded(capsys, smol):
    args = ["generate", "--prompt", "Tell me a story.", "--system", "You are gloomy.", "--temperature", "0.9",
            "--seed", "7", "--max-new-tokens", "12"]
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first


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
