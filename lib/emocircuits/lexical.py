"""Word-list measures: whether a reply names an emotion (by its stem) and paper A's keyword judge of
empathy against task words. They read only the words, so they are baselines and checks, never judges of
what a reply means."""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import numpy as np

# The start of each emotion's word family ("ang" for anger, angry, angrily).
EMOTION_STEMS = {"anger": "ang", "sadness": "sad", "happiness": "happ", "fear": "fear", "surprise": "surpris",
                 "disgust": "disgust"}


def names_emotion(texts: Sequence[str], emotions: Sequence[str]) -> np.ndarray:
    """Whether each text contains its emotion's word (a judge-free check of how an emotion is expressed)."""
    texts, emotions = list(texts), list(emotions)
    if len(texts) != len(emotions):
        raise ValueError(f"texts and emotions differ in length: {len(texts)} vs {len(emotions)}")
    bad = sorted({e for e in emotions if e not in EMOTION_STEMS})
    if bad:
        raise ValueError(f"emotions {bad}: expected one of {', '.join(EMOTION_STEMS)}")
    return np.array([EMOTION_STEMS[e] in t.lower() for t, e in zip(texts, emotions)], dtype=bool)


KEYWORD_EMPATHY = ("sorry", "understand", "feel", "care", "help", "support", "comfort", "safe", "okay", "listen",
                   "together")


KEYWORD_TASK = ("task", "objective", "goal", "complete", "efficient", "finish", "points", "score", "win",
                "progress")


def paper_a_keywords(text: str) -> tuple[int, int]:
    words = re.findall(r"[a-z']+", text.lower())
    c = Counter(words)
    return sum(c[w] for w in KEYWORD_EMPATHY), sum(c[w] for w in KEYWORD_TASK)


def keyword_judge(texts: Sequence[str]) -> list[float]:
    """Paper A's heuristic: empathy keywords minus task keywords (11 vs 10 words)."""
    return [float(e - t) for e, t in (paper_a_keywords(x) for x in texts)]


def keyword_success(base: Sequence[str], steered: Sequence[str], alpha: float) -> float:
    """Paper A's success rate: the keyword score moves in alpha's direction vs alpha = 0.

    As in the paper, for negative alpha an *unchanged* score counts as success,
    which is why this baseline overstates suppression (chapter 06 shows it).
    """
    b, s = np.array(keyword_judge(base)), np.array(keyword_judge(steered))
    if len(b) != len(s):
        raise ValueError("base and steered must have the same length")
    return float(np.mean(s > b)) if alpha > 0 else float(np.mean(s <= b))
