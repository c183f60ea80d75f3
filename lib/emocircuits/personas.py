"""Persona Vectors' direction (chapter 06): the model's own replies under a trait-eliciting and a
trait-suppressing system prompt, their activations, and the mean difference between the two sides per
layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .activations import capture
from .generation import generate
from .readout import mean_diff
from .sites import model_layers


@dataclass
class PersonaReplies:
    """The model's replies to each question under both system prompts of each persona pair (one row per pair)."""

    persona: list[str]
    question: list[str]
    positive_system: list[str]
    negative_system: list[str]
    positive: list[str]
    negative: list[str]

    def __len__(self) -> int:
        return len(self.question)

    @property
    def complete(self) -> np.ndarray:
        """One bool per row: both replies have text (an empty reply has no tokens to average)."""
        return np.array([bool(a.strip()) and bool(b.strip()) for a, b in zip(self.positive, self.negative)], bool)

    def select(self, rows) -> "PersonaReplies":
        """The rows picked by a boolean mask or a list of indices."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, int)
        return PersonaReplies(*([getattr(self, f)[i] for i in rows] for f in
                                ("persona", "question", "positive_system", "negative_system", "positive", "negative")))


def _texts_of(items, name: str, field_name: str, bare: bool) -> list[str]:
    """``field_name`` of each record (or dict); plain strings too when ``bare``."""
    def get(x):
        if isinstance(x, str):
            return x if bare else None
        return x.get(field_name) if isinstance(x, dict) else getattr(x, field_name, None)

    items = list(items)
    out = [get(x) for x in items]
    bad = [i for i, t in enumerate(out) if not isinstance(t, str) or not t.strip()]
    if not out or bad:
        what = ("non-empty strings or " if bare else "") + f"records with a non-empty {field_name!r}"
        raise ValueError(f"{name}: expected a non-empty list of {what}"
                         + (f"; items {bad[:5]} are not" if bad else ", got an empty one"))
    return out


def persona_replies(lm, personas, questions, max_new_tokens: int = 40, repetition_penalty: float = 1.2,
                    batch_size: int = 24, progress: bool = False) -> PersonaReplies:
    """Persona Vectors' contrast: every question answered under each pair's trait-eliciting and -suppressing prompt.

    ``personas`` are records with ``positive`` and ``negative`` system
    prompts (``persona_pairs``); ``questions`` are strings or records with
    ``text`` (``persona_questions``). Decoding is greedy with ``repetition_penalty``
    (see :func:`generation.generate`), so the replies are reproducible.
    """
    personas = list(personas)
    pos_sys = _texts_of(personas, "personas", "positive", bare=False)
    neg_sys = _texts_of(personas, "personas", "negative", bare=False)
    qs = _texts_of(questions, "questions", "text", bare=True)
    ids = [str(p.get("id", i) if isinstance(p, dict) else getattr(p, "id", i)) for i, p in enumerate(personas)]
    rows = [(pid, q, ps, ns) for pid, ps, ns in zip(ids, pos_sys, neg_sys) for q in qs]
    kw = dict(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty, batch_size=batch_size,
              progress=progress)
    users = [r[1] for r in rows]
    pos = generate(lm, users, system=[r[2] for r in rows], **kw)
    neg = generate(lm, users, system=[r[3] for r in rows], **kw)
    return PersonaReplies([r[0] for r in rows], users, [r[2] for r in rows], [r[3] for r in rows], pos, neg)


def persona_activations(lm, replies: PersonaReplies, layers: Sequence[int], site_kind: str = "resid_post",
                        system: bool = True, progress: bool = False
                        ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Each reply's activation averaged over its own tokens, read after its question and (``system=True``, as
    Persona Vectors does) its system prompt.

    With the system prompt in context every reply token can carry which
    prompt it followed, so a direction can tell the two sides apart even
    where the replies themselves do not differ; ``system=False`` reads the
    replies after the question alone, the control for that. An empty reply
    is refused (``capture`` names it); ``replies.select(replies.complete)``
    leaves those rows out.
    Returns ``({layer: X_pos}, {layer: X_neg})``, rows in the order of ``replies``.
    """
    layers = model_layers(lm, layers)
    texts, starts = [], []
    for systems, answers in ((replies.positive_system, replies.positive), (replies.negative_system, replies.negative)):
        for u, s, a in zip(replies.question, systems, answers):
            prompt = lm.chat_prompt(u, system=s if system else None)
            texts.append(prompt + a)
            starts.append(len(prompt))
    sites = [f"{site_kind}.{l}" for l in layers]
    acts = capture(lm, texts, sites, pooling="mean_response", response_starts=starts, progress=progress)
    n = len(replies)
    X = {l: acts[s].double().numpy() for l, s in zip(layers, sites)}
    return {l: x[:n] for l, x in X.items()}, {l: x[n:] for l, x in X.items()}


def persona_directions(lm, replies: PersonaReplies, layers: Sequence[int], keep=None, site_kind: str = "resid_post",
                       system: bool = True, progress: bool = False) -> dict[int, np.ndarray]:
    """Persona Vectors' trait direction per layer: :func:`emocircuits.readout.mean_diff` of the model's own
    replies under the two prompts.

    ``keep`` (one bool per row of ``replies``) restricts the difference to
    the rows where the prompts worked, e.g. where a judge scored the
    trait-eliciting reply above the other (Persona Vectors keeps replies by
    their trait score). A row where either reply is empty has no tokens to
    average and is left out. ``system``: as in :func:`persona_activations`.
    """
    keep = np.ones(len(replies), bool) if keep is None else np.asarray(keep)
    if keep.shape != (len(replies),) or keep.dtype != bool:
        raise ValueError(f"keep: expected {len(replies)} booleans, one per row of replies; got "
                         f"shape {keep.shape}, dtype {keep.dtype}")
    keep = keep & replies.complete
    if not keep.any():
        raise ValueError("keep selects no row with two non-empty replies: a direction needs at least one pair")
    X_pos, X_neg = persona_activations(lm, replies.select(keep), layers, site_kind, system, progress)
    return {l: mean_diff(X_pos[l], X_neg[l]) for l in X_pos}
