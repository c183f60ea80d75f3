"""Steering sweeps and their statistics (chapters 03 and 06): a reply to every prompt at every (layer,
alpha, seed) with ``alpha x direction`` added (:class:`~emocircuits.interventions.Add`), and the judged
sweep read as a success rate against seed-to-seed noise or as the share of prompts moved both ways.

Generation itself is in :mod:`.generation`, the rule that picks a setting in :mod:`.choosing`, and
writing vectors to disk in :mod:`.vectors`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .activations import capture
from .generation import Decoding, generate_grid
from .interventions import Add, check_positions
from .stats import bootstrap_ci


ALPHAS = (-20, -10, -5, -3, -1, 0, 1, 3, 5, 10, 20)  # paper A's grid, for a unit direction


def residual_rms(lm, texts: Sequence[str], layer: int, site_kind: str = "resid_post") -> float:
    """Root mean square of the site's entries over every real token of ``texts`` (paper B scales alpha by it)."""
    site = f"{site_kind}.{layer}"
    rows = capture(lm, list(texts), [site], pooling="none", progress=False)[site]
    x = torch.cat(rows)
    return float(x.pow(2).mean().sqrt())


SWEEP = Decoding(max_new_tokens=48, temperature=0.7)  # a sweep's decoding unless told: greedy, 48 tokens


def sweep(lm, prompts: Sequence[dict], direction, layers: Sequence[int], alphas: Sequence[float] = ALPHAS,
          scale: str = "unit", positions: str = "all", seeds: Sequence[int] = (0,), decoding: Decoding | None = None,
          site_kind: str = "resid_post", batch_size: int = 32, progress: bool = False, **settings) -> list[dict]:
    """Generate a reply to every prompt at every (layer, alpha, seed), adding ``alpha x direction``.

    ``prompts`` are dicts with ``id``, ``user`` and optionally ``system``.
    ``direction`` is one vector for every layer or a dict ``{layer: vector}``;
    it is normalised to unit length. With ``scale="rms"`` alpha is in units
    of the site's residual RMS on the prompts (paper B); with ``"unit"`` it
    multiplies the unit vector (paper A). ``decoding`` (:data:`SWEEP` when
    None; settings given by name change it) says how replies are decoded; its
    seed is replaced by each of ``seeds`` in turn. Several ``seeds`` only make
    sense with ``do_sample=True`` (greedy decoding ignores the seed); they give
    the seed-to-seed noise that :func:`steering_success` compares against.
    Each record: ``id, layer, alpha, scale, coef, seed, positions, text``,
    where ``coef`` is the multiplier actually applied to the unit vector.
    All settings' replies for one seed share batches of ``batch_size`` rows,
    each row with its own intervention (:func:`generate_grid`).
    """
    if scale not in ("unit", "rms"):
        raise ValueError(f"scale={scale!r}: expected 'unit' or 'rms'")
    dec = Decoding.of(decoding or SWEEP, **settings)
    if len(set(seeds)) > 1 and not dec.do_sample:
        raise ValueError("several seeds with greedy decoding give identical replies; pass do_sample=True")
    check_positions(positions)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty")
    users = [p["user"] for p in prompts]
    systems = [p.get("system") for p in prompts]
    chat_texts = [lm.chat_prompt(u, s) for u, s in zip(users, systems)]
    grid = []  # (layer, alpha, coef, interventions), one per setting
    for layer in layers:
        vec = direction[layer] if isinstance(direction, dict) else direction
        vec = torch.as_tensor(vec, dtype=torch.float32)
        vec = vec / vec.norm()
        unit = residual_rms(lm, chat_texts, layer, site_kind) if scale == "rms" else 1.0
        for alpha in alphas:
            coef = float(alpha) * unit
            ivs = [Add(f"{site_kind}.{layer}", vec, alpha=coef, positions=positions)] if alpha != 0 else []
            grid.append((int(layer), float(alpha), coef, ivs))
    texts = {seed: generate_grid(lm, users, [g[3] for g in grid], system=systems, decoding=dec.replace(seed=seed),
                                 batch_size=batch_size, progress=progress)
             for seed in seeds}  # seed -> [setting][prompt]
    out = []
    for g, (layer, alpha, coef, _) in enumerate(grid):
        for seed in seeds:
            out.extend({"id": p["id"], "layer": layer, "alpha": alpha, "scale": scale, "coef": coef,
                        "seed": int(seed), "positions": positions, "text": t}
                       for p, t in zip(prompts, texts[seed][g]))
    return out


def judged_sweep(lm, prompts: Sequence[dict], direction, layers: Sequence[int], alphas: Sequence[float], judge,
                 **sweep_kwargs) -> tuple[list[dict], list[float], list[bool]]:
    """A :func:`sweep` read by a judge: ``(records, scores, coherent)``, what :func:`steering_success` and
    :func:`both_ways` take. Each record carries its prompt's ``user`` message; ``judge(texts, users)`` returns
    the replies' scores and coherence flags (e.g. ``functools.partial(coherence.judged, lm, judge.score)``)."""
    records = sweep(lm, prompts, direction, layers, alphas, **sweep_kwargs)
    users = {p["id"]: p["user"] for p in prompts}
    records = [{**r, "user": users[r["id"]]} for r in records]
    scores, coherent = judge([r["text"] for r in records], [r["user"] for r in records])
    return records, list(scores), list(coherent)


def second_reading(judged, score, seed: int = 0) -> tuple[float, float]:
    """Another judge's reading of a judged sweep ``(records, scores, coherent)`` whose records carry ``user``:
    the share of prompts it sees moved both ways (the first row of :func:`both_ways`) and the Spearman rho of
    its scores, ``score(texts, users)``, with the first judge's."""
    from scipy.stats import spearmanr

    records, first, coherent = judged
    again = score([r["text"] for r in records], [r["user"] for r in records])
    return float(both_ways(records, again, coherent, seed=seed).iloc[0].share), float(spearmanr(again, first)[0])


def _judged_frame(records: Sequence[dict], scores: Sequence[float], coherent: Sequence[bool]):
    """Sweep records with their judged score and coherence as a DataFrame, checked for a baseline.

    ``positions`` is "all" and ``scale`` "unit" when absent. Nothing acts at
    alpha = 0, so those replies are labelled positions "all" and scale
    "any" whatever they were swept with, and kept once per (id, layer,
    seed): they are the baseline of every positions and scale of their
    layer, which each layer must have.
    """
    import pandas as pd

    if not (len(records) == len(scores) == len(coherent)):
        raise ValueError(f"records, scores and coherent must have the same length, got "
                         f"{len(records)}, {len(scores)}, {len(coherent)}")
    df = pd.DataFrame(records)
    if "positions" not in df:
        df["positions"] = "all"
    if "scale" not in df:
        df["scale"] = "unit"
    df = df[["id", "layer", "alpha", "seed", "positions", "scale"]].assign(score=list(map(float, scores)),
                                                                           coherent=list(map(bool, coherent)))
    df.loc[df.alpha == 0, ["positions", "scale"]] = ["all", "any"]
    df = df.drop_duplicates(["id", "layer", "alpha", "seed", "positions", "scale"])
    no_base = sorted(set(df.layer) - set(df.layer[df.alpha == 0]))
    if no_base:
        raise ValueError(f"layer {no_base[0]} has no alpha = 0 replies: the sweep needs them as its baseline")
    return df


def steering_success(records: Sequence[dict], scores: Sequence[float], coherent: Sequence[bool],
                     n_boot: int = 1000, seed: int = 0):
    """Per (layer, positions, scale, alpha): judged score, coherent share, and the honest success rate.

    For each prompt, ``delta`` is its mean score over seeds at alpha minus
    at alpha = 0 (same layer; the alpha = 0 replies of a layer are the
    baseline of every ``positions``, since nothing acts at alpha = 0). The
    noise threshold is twice the standard error of a prompt's mean at
    alpha = 0 (pooled seed-to-seed SD / sqrt(seeds)); with one seed it is 0
    and any change counts. A prompt succeeds when ``delta`` has alpha's
    sign, exceeds the threshold, and every reply at that alpha is coherent.
    Alpha = 0 rows (``positions`` "all") report the baseline and no success
    rate (and scale "any"). Records without ``positions`` count as "all",
    without ``scale`` as "unit". Returns a pandas DataFrame with bootstrap
    intervals over prompts.
    """
    import numpy as np
    import pandas as pd

    df = _judged_frame(records, scores, coherent)
    rows = []
    for layer, lay in df.groupby("layer"):
        per = lay.groupby(["positions", "scale", "alpha", "id"]).agg(
            score=("score", "mean"), sd=("score", "std"), n=("score", "size"), coherent=("coherent", "all"))
        base = per.xs(("all", "any", 0.0), level=("positions", "scale", "alpha"))
        n_seeds = int(base.n.max())
        pooled_sd = float(np.sqrt(np.nanmean(base.sd.to_numpy() ** 2))) if n_seeds > 1 else 0.0
        threshold = 2 * pooled_sd / np.sqrt(n_seeds) if n_seeds > 1 else 0.0
        for (pos, sc, alpha), g in per.groupby(level=["positions", "scale", "alpha"]):
            g = g.droplevel(["positions", "scale", "alpha"])
            delta = (g.score - base.score.reindex(g.index)).to_numpy()
            raw = lay[(lay.positions == pos) & (lay.scale == sc) & (lay.alpha == alpha)]
            row = {"layer": layer, "positions": pos, "scale": sc, "alpha": alpha, "score": float(g.score.mean()),
                   "coherent_share": float(raw.coherent.mean()), "threshold": threshold}
            if len(g) > 1:
                row["score_lo"], row["score_hi"] = bootstrap_ci(g.score.to_numpy(), n_boot=n_boot, seed=seed)[1:]
            if alpha != 0:
                ok = (np.sign(delta) == np.sign(alpha)) & (np.abs(delta) > threshold) & g.coherent.to_numpy()
                row["success"] = float(ok.mean())
                if len(ok) > 1:
                    row["success_lo"], row["success_hi"] = bootstrap_ci(ok.astype(float), n_boot=n_boot,
                                                                        seed=seed)[1:]
            rows.append(row)
    return pd.DataFrame(rows)


def both_ways(records: Sequence[dict], scores: Sequence[float], coherent: Sequence[bool], min_share: float = 0.8,
              min_coherent: float = 0.9, n_perm: int = 200, n_boot: int = 1000, seed: int = 0):
    """Per (layer, positions, scale, |alpha|): the share of prompts moved both ways, with its chance level.

    A prompt is *moved both ways* when its mean score over seeds is above
    its alpha = 0 mean at ``+|alpha|`` and below it at ``-|alpha|``. The
    alpha = 0 replies of a layer are the baseline of every ``positions`` at
    that layer (no intervention acts at alpha = 0). ``coherent_share`` is
    over every reply at ``+-|alpha|``. ``chance`` is the share expected
    when steering does nothing: each prompt's replies at ``-|alpha|``, 0
    and ``+|alpha|`` are shuffled among the three alphas (``n_perm`` times,
    seeded) and the share recomputed; without effect each order of the
    three means is equally likely, so it is near 1/6. ``meets_goal``: share >=
    ``min_share`` and coherent share >= ``min_coherent``. Records need
    ``id, layer, alpha, seed`` and may carry ``positions`` (default
    ``"all"``) and ``scale`` (default ``"unit"``). Returns a pandas DataFrame with a bootstrap interval over
    prompts for the share.
    """
    import numpy as np
    import pandas as pd

    df = _judged_frame(records, scores, coherent)
    rng = np.random.default_rng(seed)
    rows = []
    for layer, lay in df.groupby("layer"):
        base = lay[lay.alpha == 0]
        for (pos, sc), grp in lay[lay.alpha != 0].groupby(["positions", "scale"]):
            for a in sorted(set(grp.alpha.abs())):
                up, down = grp[grp.alpha == a], grp[grp.alpha == -a]
                ids = sorted(set(up.id) & set(down.id) & set(base.id))
                if not ids:
                    continue
                trip = pd.concat([down.assign(k=0), base.assign(k=1), up.assign(k=2)])
                trip = trip[trip.id.isin(ids)]
                groups = [g.sort_values(["k", "seed"]) for _, g in trip.groupby("id")]
                s = [g.score.to_numpy() for g in groups]
                k = [g.k.to_numpy() for g in groups]

                def moved(labels):  # per prompt: the mean at -a below the mean at 0, and that below +a
                    down_, base_, up_ = (np.array([x[lab == j].mean() for x, lab in zip(s, labels)])
                                         for j in range(3))
                    return (up_ > base_) & (down_ < base_)

                ok = moved(k).astype(float)
                chance = np.mean([moved([rng.permutation(lab) for lab in k]).mean() for _ in range(n_perm)])
                coh = float(pd.concat([up, down]).coherent.mean())
                row = {"layer": layer, "positions": pos, "scale": sc, "alpha": float(a), "prompts": len(ids),
                       "share": float(ok.mean()), "chance": float(chance), "coherent_share": coh,
                       "score_up": float(up[up.id.isin(ids)].score.mean()),
                       "score_0": float(base[base.id.isin(ids)].score.mean()),
                       "score_down": float(down[down.id.isin(ids)].score.mean())}
                row["share_lo"], row["share_hi"] = (bootstrap_ci(ok, n_boot=n_boot, seed=seed)[1:]
                                                    if len(ok) > 1 else (np.nan, np.nan))
                row["meets_goal"] = bool(row["share"] >= min_share and coh >= min_coherent)
                rows.append(row)
    cols = ["layer", "positions", "scale", "alpha", "prompts", "share", "share_lo", "share_hi", "chance", "coherent_share",
            "score_down", "score_0", "score_up", "meets_goal"]
    return pd.DataFrame(rows, columns=cols)
