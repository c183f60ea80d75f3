"""Shared fixtures: the two bundled models (loaded once) and tiny random models of each architecture."""

from __future__ import annotations

import os
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two test processes share the cores: the chapters' kernels they start get one thread too (two spinning
    # OpenMP threads beside the other process made a 13 s chapter test take 75 s)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from emocircuits.models import load_model

from testkit import TINY_KINDS, make_tiny  # noqa: E402

# one thread per process when pytest-xdist runs several (make test runs two), else up to two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smol():
    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def gemma():
    return load_model("gemma3-270m", device="cpu")


@pytest.fixture(scope="session", params=["smollm2-135m", "gemma3-270m"])
def bundled(request, smol, gemma):
    return smol if request.param == "smollm2-135m" else gemma


_TINY: dict = {}


def _tiny(tmp_path_factory, kind: str):
    """One tiny random model of ``kind`` (a testkit.TINY_KINDS entry) per session."""
    if kind not in _TINY:
        _TINY[kind] = load_model(make_tiny(tmp_path_factory.mktemp(f"tiny-{kind}"), kind), device="cpu")
    return _TINY[kind]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return _tiny(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory):
    return _tiny(tmp_path_factory, "gemma")


@pytest.fixture(scope="session", params=TINY_KINDS)
def tiny_arch(request, tmp_path_factory):
    """Each architecture of the papers' models in turn (Llama, Llama 3, Qwen2, Phi-3, Gemma 2, Gemma 3)."""
    return _tiny(tmp_path_factory, request.param)


@pytest.fixture(scope="session")
def quick_book():
    """The QUICK book as ``make book-quick`` builds it: every chapter executed by
    papermill into ``_build/executed-quick`` (a chapter whose source, parameters
    and library code are unchanged is reused) and rendered to ``_build/html-quick``."""
    from emocircuits.book import DEFAULT_MODEL, ROOT, build
    from emocircuits.records import executed_dir, html_dir

    build(quick=True, model=DEFAULT_MODEL, seed=0)
    return SimpleNamespace(root=ROOT, executed=executed_dir(ROOT, quick=True), html=html_dir(ROOT, quick=True),
                           params={"MODEL": DEFAULT_MODEL, "QUICK": True, "FULL": False, "SEED": 0})


def pytest_collection_modifyitems(config, items):
    """Run the tests that need the QUICK book first: the chapters then execute
    while this process holds no models yet (on a small CI machine the memory
    of loaded session fixtures slowed every chapter's kernel)."""
    items.sort(key=lambda item: "quick_book" not in getattr(item, "fixturenames", ()))
    for item in items:  # so that `-m quick_book` and `-m "not quick_book"` split the run
        if "quick_book" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.quick_book)
