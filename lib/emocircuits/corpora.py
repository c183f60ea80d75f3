"""The judges' corpora: reading them, their seeded splits, and which files train, develop and test each
judge (chapter 02). Every file is the project's own writing (``data/README.md`` says who wrote it, how)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from .datasets import DATA_DIR, EMOTIONS
from .embeddings import JudgeError, embed_cached

LABELS = EMOTIONS + ("neutral",)  # the emotion judges' labels, in the order of their probabilities


def read_corpus(name: str | Path) -> list[dict]:
    """The records of a judge's corpus: a name under ``data/`` (``"judge_empathy"``) or a JSONL file's path."""
    path = Path(name) if isinstance(name, Path) or str(name).endswith(".jsonl") else DATA_DIR / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"read_corpus({str(name)!r}): no file {path}; give a corpus name under "
                                f"{DATA_DIR} (e.g. 'judge_empathy') or a .jsonl path")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def corpus_split(ids: Sequence[str], test_fraction: float = 0.2, seed: int = 0, groups: Sequence[str] | None = None
                 ) -> np.ndarray:
    """A seeded boolean test mask; with ``groups``, whole groups go to one side."""
    rng = np.random.default_rng(seed)
    if groups is None:
        groups = list(ids)
    uniq = sorted(set(groups))
    test_groups = set(rng.choice(uniq, size=max(1, round(test_fraction * len(uniq))), replace=False).tolist())
    return np.array([g in test_groups for g in groups])


# The emotion judges' training corpora (each stratified 80/20 by label, seeded) and their validation sets,
# which no judge ever trains on (see chapter 02 and data/README.md).
EMOTION_CORPORA = ("judge_emotion", "judge_emotion_registers")
EMOTION_VALIDATION = {
    # 360 replies written to SEV test prompts; read while building the judges (it decided which kind tunes)
    "chat replies to SEV prompts": "judge_emotion_chat",
    # 180 more, written afterwards to the same brief and read once by the tuning judge after both judges
    # were fixed (the reporting judge was simplified after that reading: its number is a second reading)
    "fresh chat replies": "judge_emotion_fresh",
    # 144 replies of the bundled models (prompted and steered), labelled by hand without the judges' verdicts;
    # the 22 labelled "unclear" (broken text) are left out
    "bundled models' replies, labelled by hand": "judge_emotion_bundled",
}


def _corpus_paths(path: str | Path | Sequence[Path] | None, default: Sequence[str]) -> list[Path]:
    """The file or files given, or the bundled corpora named in ``default``."""
    if path is None:
        return [DATA_DIR / f"{n}.jsonl" for n in default]
    return [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]


def emotion_corpus(path: Path | Sequence[Path] | None = None, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """Records of the emotion corpora (:data:`EMOTION_CORPORA`, or the file or files given) and a test mask
    that holds out 20% of each file's texts per label (seeded).

    Each record gains ``source`` (its file's stem) and ``group`` (its file's ``style`` or ``register``
    field, prefixed by the stem): the unit the judges' settings are cross-validated over.
    """
    paths = _corpus_paths(path, EMOTION_CORPORA)
    recs, test = [], []
    for p in paths:
        part = read_corpus(p)
        bad = [r.get("id") for r in part if r.get("label") not in LABELS or not str(r.get("text", "")).strip()]
        if bad:
            raise JudgeError(f"{p.name}: records with unknown label or empty text: {bad[:5]}; labels are "
                             f"{', '.join(LABELS)}")
        mask = np.zeros(len(part), bool)
        for lab in LABELS:
            idx = [i for i, r in enumerate(part) if r["label"] == lab]
            if idx:
                mask[np.array(idx)[corpus_split([part[i]["id"] for i in idx], 0.2, seed)]] = True
        for r in part:
            kind = r.get("register") or r.get("style") or "text"
            recs.append({**r, "source": p.stem, "group": f"{p.stem}:{kind}"})
        test.extend(mask)
    return recs, np.array(test, bool)


def emotion_validation(name: str) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` of one emotion validation set (a key of :data:`EMOTION_VALIDATION`)."""
    if name not in EMOTION_VALIDATION:
        raise JudgeError(f"unknown validation set {name!r}; expected one of {', '.join(EMOTION_VALIDATION)}")
    recs = [r for r in read_corpus(EMOTION_VALIDATION[name]) if r["label"] != "unclear"]
    return [r["text"] for r in recs], [r["label"] for r in recs]


# The empathy judges' training corpora (80/20 by clusters of similar situations, seeded). Their
# development sets (EMPATHY_DEVELOPMENT) were read while building them and decide which kind tunes; their
# test set (EMPATHY_TEST) was read once, after both were fixed. None of these is trained on.
# judge_empathy_voices (2026-12-07) was written after judge_empathy_fresh, the first test set, had been
# read and had shown where the judges failed (forum registers): from then on judge_empathy_fresh is a
# development set, and judge_empathy_assistant, written and labelled blind afterwards, is the test set.
EMPATHY_CORPORA = ("judge_empathy", "judge_empathy_registers", "judge_empathy_voices")
EMPATHY_DEVELOPMENT = ("judge_empathy_heldout", "judge_empathy_fresh")
EMPATHY_TEST = "judge_empathy_assistant"


def empathy_corpus(path: Path | Sequence[Path] | None = None, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """Records of the empathy corpora (:data:`EMPATHY_CORPORA`, or the file or files given) and a 80/20
    test mask that holds out whole clusters of similar situations."""
    paths = _corpus_paths(path, EMPATHY_CORPORA)
    recs = [r for p in paths for r in read_corpus(p)]
    names = ", ".join(p.name for p in paths)
    bad = [r.get("id") for r in recs if r.get("score") not in (1, 2, 3, 4, 5) or not str(r.get("reply", "")).strip()]
    if bad:
        raise JudgeError(f"{names}: records with a score outside 1-5 or an empty reply: {bad[:5]}")
    bad = [r.get("id") for r in recs if r.get("setting") not in ("personal", "game")]
    if bad:
        raise JudgeError(f"{names}: records whose setting is not 'personal' or 'game': {bad[:5]}")
    dup = sorted(k for k, n in Counter(r["id"] for r in recs).items() if n > 1)
    if dup:
        raise JudgeError(f"{names}: ids used twice: {dup[:5]}")
    return recs, corpus_split([r["id"] for r in recs], 0.2, seed, groups=situation_clusters(
        [r["situation"] for r in recs]))


def situation_clusters(situations: Sequence[str], threshold: float = 0.6) -> list[str]:
    """A group name per situation: situations whose embeddings have cosine > ``threshold`` (directly
    or through a chain) share a group, so near-duplicates (two texts about a pet's death written
    alike) never sit on both sides of a split."""
    from scipy.sparse.csgraph import connected_components

    uniq = sorted(set(situations))
    table = embed_cached(uniq)
    E = np.stack([table[s] for s in uniq])
    _, comp = connected_components((E @ E.T) > threshold, directed=False)
    name = {s: f"cluster-{c}" for s, c in zip(uniq, comp)}
    return [name[s] for s in situations]

