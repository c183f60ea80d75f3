"""Chapter 04's captures: the sites it reads, activations of the scenario x event-valence prompts and of
the replies, residuals at the last token, and the emotion directions read from them (paper B)."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import torch

from . import datasets as ds
from .activations import capture
from .causal import sublayer_influence
from .readout import centred_centroids
from .sites import all_layers


def direction_sites(n_layers: int) -> list[str]:
    """Sites whose last-token activations give the directions chapter 04 uses."""
    return [f"{k}.{l}" for l in range(n_layers) for k in ("attn_out", "resid_mid", "mlp_out", "resid_post")]


def chapter_sites(n_layers: int) -> list[str]:
    """Every site chapter 04 reads: :func:`direction_sites` plus ``mlp_act`` and ``attn_z`` of every layer."""
    return direction_sites(n_layers) + all_layers("mlp_act", n_layers) + all_layers("attn_z", n_layers)


def sev_activations(lm, records: Sequence, keep: Sequence | None = None) -> tuple[list[dict], dict]:
    """Paper B's prompts for ``records`` and their last-prompt-token activations at every site chapter 04 reads.

    Returns ``(prompts, {site: tensor})`` for the residual-width sites of
    :func:`direction_sites` plus ``mlp_act`` and ``attn_z`` of every layer,
    one cached capture. Chapter 03 reads its residual-stream sites from the
    same capture, so whichever of the two chapters runs first pays for the
    forward passes and the other loads them from the cache. ``keep`` (some
    of ``records``) returns only their prompts' rows, so a chapter that
    needs fewer scenarios still reads the shared capture.
    """
    prompts = ds.sev_prompts(records)
    texts = [lm.chat_prompt(p["user"], system=p["system"]) for p in prompts]
    sites = chapter_sites(lm.n_layers)
    acts = capture(lm, texts, sites, cache=True, progress=False, batch_size=24)
    if keep is None:
        return prompts, acts
    ids = {r.id for r in keep}
    missing = sorted(ids - {r.id for r in records})
    if missing:
        raise ValueError(f"keep: records {missing} are not among the {len(records)} records captured")
    rows = [i for i, p in enumerate(prompts) if p["record_id"] in ids]
    index = torch.tensor(rows)
    return [prompts[i] for i in rows], {site: x[index] for site, x in acts.items()}


def reply_activations(lm, records: Sequence, contexts: Sequence[str], emotions: Sequence[str]
                      ) -> tuple[list[str], list[str], dict]:
    """The model reading replies that express an emotion: ``(labels, groups, {site: tensor})``.

    Not paper B's method, which reads instructed prompts. Each record (an
    :class:`~emocircuits.datasets.EmotionReplyRecord`) is placed as the
    assistant's reply to a user turn from ``contexts`` (user prompts without
    an emotion instruction), and every site of :func:`chapter_sites` is
    averaged over the reply's tokens: modulation adds its means at every
    generated position, so that is the state it should resemble. The i-th
    reply of every emotion follows the same context, ``contexts[i % len]``,
    and those six rows are one group, so group centring removes what the
    context does. Every emotion needs the same number of records. One
    cached capture.
    """
    emotions = list(emotions)
    if len(set(emotions)) != len(emotions) or not emotions:
        raise ValueError(f"emotions: expected distinct emotion names, got {emotions}")
    by = {e: [r for r in records if r.label == e] for e in emotions}
    other = sorted({r.label for r in records} - set(emotions))
    counts = {e: len(rs) for e, rs in by.items()}
    if other or len(set(counts.values())) != 1 or not min(counts.values()):
        raise ValueError(f"records: expected the same number of replies (at least 1) for each of {emotions} and "
                         f"no other label; got {counts}" + (f" and labels {other}" if other else ""))
    if isinstance(contexts, str):
        raise ValueError("contexts: expected a list of user prompts, not one str")
    contexts = list(contexts)
    if not contexts or not all(isinstance(c, str) and c for c in contexts):
        raise ValueError("contexts: expected a non-empty list of user prompts (non-empty strings)")
    labels, groups, texts, starts = [], [], [], []
    for i in range(counts[emotions[0]]):
        prompt = lm.chat_prompt(contexts[i % len(contexts)])
        for e in emotions:
            labels.append(e)
            groups.append(str(i))
            texts.append(prompt + by[e][i].text)
            starts.append(len(prompt))
    sites = chapter_sites(lm.n_layers)
    acts = capture(lm, texts, sites, pooling="mean_response", response_starts=starts, cache=True, progress=False,
                   batch_size=24)
    return labels, groups, acts


def sev_residuals(lm, records: Sequence, shared: Sequence = ()) -> tuple[list[dict], dict]:
    """Paper B's prompts for ``records`` and their last-prompt-token ``resid_post`` activations at every layer.

    The records that are also in ``shared`` are read from
    :func:`sev_activations` of ``shared`` (the capture chapters 03 and 04
    share, so they cost nothing when it is cached); the rest are captured
    here, residual stream only, one cached capture. Rows come in the order
    of :func:`datasets.sev_prompts` over ``records``.
    """
    ids = [r.id for r in records]
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise ValueError(f"records: {repeated} appear more than once; expected distinct scenario records")
    shared_ids = {r.id for r in shared}
    sites = all_layers("resid_post", lm.n_layers)
    prompts, acts = [], {s: [] for s in sites}
    if shared_ids & set(ids):
        s_prompts, s_acts = sev_activations(lm, shared, keep=[r for r in records if r.id in shared_ids])
        prompts += s_prompts
        for s in sites:
            acts[s].append(s_acts[s])
    rest = [r for r in records if r.id not in shared_ids]
    if rest:
        r_prompts = ds.sev_prompts(rest)
        r_acts = capture(lm, [lm.chat_prompt(p["user"], system=p["system"]) for p in r_prompts], sites,
                         cache=True, progress=False, batch_size=24)
        prompts += r_prompts
        for s in sites:
            acts[s].append(r_acts[s])
    # back into the order of records (a stable sort keeps each record's own prompts in sev_prompts order)
    place = {i: k for k, i in enumerate(ids)}
    order = sorted(range(len(prompts)), key=lambda k: place[prompts[k]["record_id"]])
    index = torch.tensor(order)
    return [prompts[k] for k in order], {s: torch.cat(xs)[index] for s, xs in acts.items()}


def directions(acts: dict[str, torch.Tensor], labels: Sequence[str], groups: Sequence[str],
               emotions: Sequence[str]) -> dict[str, np.ndarray]:
    """Paper B's context-agnostic unit direction per emotion at every residual-width site: ``{site: [E, d]}``."""
    out = {}
    for site, x in acts.items():
        if site.split(".")[0] in ("mlp_act", "attn_z"):
            continue
        out[site] = centred_centroids(torch.as_tensor(x).double().numpy(), labels, groups, emotions)
    return out


def sublayer_influences(lm, dirs: dict[str, np.ndarray], texts: Sequence[str], emotions: Sequence[str],
                        random_push: np.ndarray, alphas: Sequence[float] = (0.5, 1.0, 2.0), batch_size: int = 8,
                        reference: str = "happiness") -> dict:
    """Paper B's sublayer influence (:func:`.causal.sublayer_influence`) of each emotion's own direction at
    every attention and MLP sublayer (``dirs["attn_out.L"][e]``, ``dirs["mlp_out.L"][e]``), read on that
    emotion's direction at the last layer, plus one more column: a push along ``random_push`` (the same at
    every sublayer), read on the ``reference`` emotion's last-layer direction, as the baseline.
    Returns ``{"attn": [n_layers, E + 1], "mlp": [n_layers, E + 1], "sigma": ...}``."""
    if reference not in emotions:
        raise ValueError(f"reference={reference!r}: expected one of {list(emotions)}")
    last = lm.n_layers - 1
    local = {f"{k}.{l}": np.vstack([dirs[f"{k}.{l}"], random_push]) for l in range(lm.n_layers)
             for k in ("attn_out", "mlp_out")}
    ref = np.vstack([dirs[f"resid_post.{last}"], dirs[f"resid_post.{last}"][list(emotions).index(reference)]])
    return sublayer_influence(lm, texts, local, ref, alphas=alphas, batch_size=batch_size, progress=False)
