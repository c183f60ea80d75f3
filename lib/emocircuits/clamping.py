"""Paper C's clamp experiments (chapter 05): a circuit grown per prompt, clamps of its features at the
prompt's final token (paper C's choice) or at every position, random-feature controls of the same size,
union and intersection circuits across prompts, a circuit kept to the features whose top contexts read as
emotional, and the next-token distribution a clamp moves.

A circuit here is a set of ``(layer, feature)`` pairs of a :class:`~.transcoders.TranscoderSet`; a clamp
sets each to a value through :class:`~.interventions.Transcode` (``mlp_out += (value - f) * W_dec[f]``),
so the rest of the MLP's output, error term included, is left as the model computed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from .attribution import AttributionError, Context, attribution_graph, grow, prepare
from .features import top_contexts
from .interventions import Transcode, check_positions
from .generation import forward
from .corpora import LABELS
from .transcoders import TranscoderSet

Feature = tuple[int, int]  # (layer, feature)


@dataclass(frozen=True)
class PromptCircuit:
    """A circuit grown on one prompt: the seed ``(layer, position, feature)``, each growth step's
    ``(layer, position, feature, score)`` (:func:`attribution.grow`; step 0 is the seed) and how the seed
    was found (``"persistent"``: the first ranked feature active in the prompt; ``"graph"``: no ranked
    feature was, so the graph's feature with the largest total effect on the logit)."""

    text: str
    seed: tuple[int, int, int]
    steps: list
    seeded_by: str

    @property
    def features(self) -> list[Feature]:
        return sorted({(int(la), int(f)) for nodes in self.steps for la, _, f, _ in nodes})


def pick_seed(ctx: Context, ranked: Sequence[Feature], top_layer: int) -> tuple[int, int, int] | None:
    """The first of ``ranked`` (layer, feature) pairs at or below ``top_layer`` that is active in ``ctx``'s
    prompt, at the final token when it is on there, else where it is most active; None when none is."""
    active: dict = {}
    for la, p, f, a in ctx.feature_nodes():
        active.setdefault((la, f), []).append((p, a))
    for la, f in ranked:
        if la <= top_layer and (la, f) in active:
            p, _ = max(active[(la, f)], key=lambda pa: (pa[0] == ctx.n_tok - 1, pa[1]))
            return int(la), int(p), int(f)
    return None


def grow_for_prompt(lm, tset: TranscoderSet, text: str, ranked: Sequence[Feature], top_layer: int,
                    k: int = 5, steps: int = 3, max_features: int = 128, ctx: Context | None = None) -> PromptCircuit:
    """Paper C's per-prompt circuit: seed on ``text`` (:func:`pick_seed`; failing that, the graph's feature
    at or below ``top_layer`` with the largest total effect on the logit), then grow it by top-``k``
    relative influence for ``steps`` steps (:func:`attribution.grow` with ``relative=True``)."""
    ctx = prepare(lm, tset, text) if ctx is None else ctx
    seed, how = pick_seed(ctx, ranked, top_layer), "persistent"
    if seed is None:
        graph = attribution_graph(lm, tset, text, max_features=max_features, ctx=ctx)
        low = [i for i, n in enumerate(graph.features) if n[0] <= top_layer]
        if not low:
            raise AttributionError(f"no active feature at or below layer {top_layer} in this prompt to seed from")
        seed = tuple(int(v) for v in graph.features[max(low, key=lambda i: abs(graph.total_effect[i]))][:3])
        how = "graph"
    return PromptCircuit(text, seed, grow(ctx, seed, k=k, steps=steps, relative=True), how)


def union(circuits: Sequence[PromptCircuit]) -> list[Feature]:
    """Every feature of any of ``circuits`` (paper C's "all activations identified across all prompts")."""
    return sorted(set().union(*(c.features for c in circuits)))


def intersection(circuits: Sequence[PromptCircuit]) -> list[Feature]:
    """The features in every one of ``circuits`` (paper C's "only activations that existed in all prompts");
    often empty."""
    if not circuits:
        return []
    return sorted(set.intersection(*(set(c.features) for c in circuits)))


def control(tset: TranscoderSet, feats: Sequence[Feature], seed: int = 0,
            max_act: Mapping[int, Sequence[float]] | None = None) -> list[Feature]:
    """A random-feature control of the same size and layers: for each layer as many features, drawn without
    replacement from those not in ``feats``; with ``max_act`` (each feature's largest activation on
    held-out text), only from features that fired there, as a circuit's features did (a dead feature
    clamped to a multiple of its maximum would be clamped to nothing)."""
    rng = np.random.default_rng(seed)
    per: dict[int, int] = {}
    for la, _ in feats:
        per[la] = per.get(la, 0) + 1
    out = []
    for la, n in sorted(per.items()):
        own = {f for l2, f in feats if l2 == la}
        live = (lambda f: float(max_act[la][f]) > 0) if max_act is not None else (lambda f: True)
        pool = np.array([f for f in range(tset[la].cfg.n_features) if f not in own and live(f)])
        if len(pool) < n:
            raise ValueError(f"control: layer {la} has {len(pool)} live features outside the circuit, "
                             f"{n} needed")
        out += [(la, int(f)) for f in rng.choice(pool, size=n, replace=False)]
    return out


def clamps(tset: TranscoderSet, feats: Sequence[Feature], value: float | None = None,
           relative: float | None = None, max_act: Mapping[int, Sequence[float]] | None = None,
           positions: str = "last_prompt") -> list[Transcode]:
    """One :class:`Transcode` per layer setting each feature of ``feats`` to ``value``, or to ``relative``
    times its largest activation on held-out text (``max_act[layer][feature]``; a feature that never fired
    there is set to ``relative`` itself). ``positions``: ``"last_prompt"`` (paper C) or any other of
    :mod:`.steering`'s position names."""
    if (value is None) == (relative is None):
        raise ValueError("clamps: give value= or relative=, one of them")
    if relative is not None and max_act is None:
        raise ValueError("clamps: relative= needs max_act (each feature's largest activation per layer)")
    feats = list(feats)
    if not feats:
        raise ValueError("clamps: no features to clamp (an empty circuit is the unmodified model)")
    check_positions(positions)
    per: dict[int, dict[int, float]] = {}
    for la, f in feats:
        if value is not None:
            v = float(value)
        else:
            top = float(max_act[la][f])
            v = relative * top if top > 0 else float(relative)
        per.setdefault(la, {})[f] = v
    return [Transcode(tset[la], clamp=c, positions=positions) for la, c in sorted(per.items())]


def about_feelings(lm, tset: TranscoderSet, feats: Sequence[Feature], texts: Sequence[str], judge,
                   top: int = 5, width: int = 12, threshold: float = 0.5) -> list[Feature]:
    """The features of ``feats`` whose top contexts in ``texts`` read as emotional: over the ``top``
    windows where each is most active (``width`` tokens before it and the token), the emotion ``judge``'s
    mean probability (``predict_proba`` in :data:`.corpora.LABELS` order) of any label but ``neutral`` is
    at least ``threshold``. A feature active nowhere in ``texts`` is left out. The judge reads short
    windows, not the meaning a feature carries; this is a declared rule, not a reading of what the feature
    does."""
    feats = list(feats)
    if not feats:
        return []
    ctxs = top_contexts(lm, tset, feats, texts, top=top, width=width)
    windows = {n: [(c["before"] + c["token"]).strip() or c["token"] for c in ctxs[n]] for n in feats}
    flat = [w for n in feats for w in windows[n]]
    if not flat:
        return []
    emotional = 1.0 - judge.predict_proba(flat)[:, LABELS.index("neutral")]  # one call for every window
    keep, i = [], 0
    for n in feats:
        k = len(windows[n])
        if k and float(np.mean(emotional[i:i + k])) >= threshold:
            keep.append(n)
        i += k
    return keep


def logit_effects(lm, texts: Sequence[str], conditions: Mapping[str, Sequence[Sequence[Transcode]]],
                  top: int = 5, batch_size: int = 16) -> dict[str, dict]:
    """What each condition does to the next-token distribution at the prompts' final token.

    ``conditions[name]`` holds one list of interventions per text (a per-prompt circuit clamps each prompt
    with its own), or None for a text that sits the condition out. For each condition, over the texts it
    acts on: the mean change of every token's probability against the unmodified model, its ``top``
    promoted and suppressed tokens (ranked by probability, so a rare token whose log-probability jumps but
    stays negligible does not lead the list), and the mean KL divergence of the clamped distribution from the
    unmodified one (nats; ``kl_each`` per text acted on). The unmodified pass runs once for all
    conditions. Texts share left-padded batches, each row with its own interventions; at the final token,
    where paper C clamps, padding changes nothing."""
    texts = list(texts)
    if not texts:
        raise ValueError("logit_effects: no texts")

    def final_logprobs(rows, per_row=None):
        return torch.cat([forward(lm, [texts[r] for r in rows[i:i + batch_size]],
                                  interventions_each=None if per_row is None else per_row[i:i + batch_size])[:, -1]
                          for i in range(0, len(rows), batch_size)]).log_softmax(-1)  # left padding: -1 is final

    base = final_logprobs(list(range(len(texts))))
    out = {}
    for name, per_text in conditions.items():
        if len(per_text) != len(texts):
            raise ValueError(f"logit_effects: condition {name!r} has {len(per_text)} lists of interventions for "
                             f"{len(texts)} texts")
        rows = [r for r, v in enumerate(per_text) if v is not None]
        if not rows:
            raise ValueError(f"logit_effects: condition {name!r} acts on no text")
        moved = final_logprobs(rows, [list(per_text[r]) for r in rows])
        delta = (moved.exp() - base[rows].exp()).mean(0)
        kl = (base[rows].exp() * (base[rows] - moved)).sum(-1)

        def tokens(v):
            idx = torch.topk(v, top).indices
            return [(lm.tokenizer.decode([int(i)]), float(delta[i])) for i in idx]

        out[name] = {"promoted": tokens(delta), "suppressed": tokens(-delta), "kl": float(kl.mean()),
                     "kl_each": kl.tolist()}
    return out
