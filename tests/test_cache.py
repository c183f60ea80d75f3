"""Cached files are keyed by the source of the code that made them: a change to that code is a miss."""

from __future__ import annotations


import numpy as np
import pytest

from emocircuits import activations, cache, classifiers, embeddings, training
from emocircuits.cache import code_version


def test_code_version_follows_the_source_of_the_named_modules(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 1\n")
    first = code_version("a", "b", folder=tmp_path)
    assert code_version("a", "b", folder=tmp_path) == first and code_version("a", folder=tmp_path) != first
    (tmp_path / "b.py").write_text("y = 2\n")
    assert code_version("a", "b", folder=tmp_path) != first
    with pytest.raises(ValueError, match=r"code_version\('c'\): no module c.py"):
        code_version("c", folder=tmp_path)
    # the real modules are found, and each cache names the modules that compute what it stores
    assert len(code_version(*activations.CACHE_CODE)) == 12
    assert set(activations.CACHE_CODE) == {"activations", "sites", "models", "bundled"}


def _edited(monkeypatch, module) -> None:
    """As if the named module's source had changed since the cache was written."""
    real = module.code_version
    monkeypatch.setattr(module, "code_version", lambda *m, **k: "edited-" + real(*m, **k))


def test_activations_cached_before_a_code_change_are_not_read_after_it(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("EMOCIRCUITS_CACHE", str(tmp_path))
    texts, sites = ["I lost my keys.", "We won the match!"], ["resid_post.0", "mlp_act.1"]
    activations.capture(tiny_llama, texts, sites, cache=True, progress=False)
    files = sorted((tmp_path / "activations").iterdir())
    files[0].write_bytes(b"")  # were it read again, loading would fail
    with pytest.raises(Exception):
        activations.capture(tiny_llama, texts, sites, cache=True, progress=False)
    _edited(monkeypatch, activations)
    got = activations.capture(tiny_llama, texts, sites, cache=True, progress=False)  # a miss: computed afresh
    assert got["resid_post.0"].shape[0] == 2 and len(list((tmp_path / "activations").iterdir())) == 2


def test_judge_fits_and_embeddings_cached_before_a_code_change_are_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOCIRCUITS_CACHE", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(3.0)}

    path = tmp_path / "judges" / "probe.safetensors"
    for _ in range(2):
        assert embeddings.store(path, compute, code=classifiers.CODE)["x"].tolist() == [0.0, 1.0, 2.0]
    assert len(calls) == 1  # the second read the file
    _edited(monkeypatch, cache)
    embeddings.store(path, compute, code=classifiers.CODE)
    assert len(calls) == 2
    # a fitted judge's weights name the whole judging stack's code; the embeddings name their own module's
    assert set(classifiers.CODE) == {"classifiers", "corpora", "embeddings", "judges"}


def test_transcoders_trained_before_a_code_change_are_trained_again(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("EMOCIRCUITS_CACHE", str(tmp_path))
    corpus = ["I lost my keys again today.", "We won the match and everyone cheered!"]
    st = training.TrainSettings(n_features=8, k=2, batch_size=2, epochs=1, layers=[0])
    training.train(tiny_llama, corpus, st, progress=False)
    training.train(tiny_llama, corpus, st, progress=False)
    assert len(list((tmp_path / "transcoders" / tiny_llama.name).iterdir())) == 1
    _edited(monkeypatch, training)
    training.train(tiny_llama, corpus, st, progress=False)
    assert len(list((tmp_path / "transcoders" / tiny_llama.name).iterdir())) == 2
