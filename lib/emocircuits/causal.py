"""Causal measurements (chapter 04): the emotion signal read at the last token with a shared-prefix cache,
ablating a circuit against random circuits of the same size, and how much each sublayer moves the
signal downstream."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from .activations import capture, check_batch_size
from .circuits import Circuit, ablation, random_like
from .contributions import as_directions
from .interventions import apply_all, resolve
from .profiling import timed
from .sites import parse_site, parse_sites, read_site, write_site
from .stats import bootstrap_ci

SUBLAYERS = ("attn", "mlp")


def projection(lm, texts: Sequence[str], direction, layer: int | None = None, interventions: Sequence = (),
               batch_size: int = 16, site_kind: str = "resid_post") -> np.ndarray:
    """Projection of the last prompt token's ``resid_post.layer`` on ``direction`` ([N] or [N, E])."""
    layer = lm.n_layers - 1 if layer is None else layer
    site = f"{site_kind}.{layer}"
    x = capture(lm, list(texts), [site], interventions=interventions, batch_size=batch_size, progress=False)[site]
    V, single = as_directions(direction)
    p = (x.double() @ V.T).numpy()
    return p[:, 0] if single else p


def _prefix_cache(lm, texts: Sequence[str], repeat: int = 1) -> tuple[dict, object]:
    """Run each text but its last token once; return the last token's inputs and the key/value cache.

    With ``repeat`` every row is repeated that many times (consecutively), so
    one prefix serves several interventions side by side.
    """
    lm.need_weights("the shared-prefix key/value cache")
    enc = {k: v.to(lm.device) for k, v in lm.encode(list(texts), padding_side="left").items()}
    with torch.inference_mode():
        pre = lm.hf(input_ids=enc["input_ids"][:, :-1], attention_mask=enc["attention_mask"][:, :-1],
                    position_ids=enc["position_ids"][:, :-1], use_cache=True)
    cache = lm.cache_of(pre)
    if repeat > 1:
        cache.batch_repeat_interleave(repeat)
    last = {"input_ids": enc["input_ids"][:, -1:], "attention_mask": enc["attention_mask"],
            "position_ids": enc["position_ids"][:, -1:]}
    return {k: v.repeat_interleave(repeat, 0) for k, v in last.items()}, cache


def _over_prefix(lm, enc_last, cache) -> dict:
    """The last token's forward inputs with a copy of the prefix's cache (a forward pass appends to the cache
    it is given, and one prefix serves many passes)."""
    import copy

    return dict(enc_last, **lm.past(copy.deepcopy(cache)))


class LastToken:
    """Read sites at each text's last token under interventions that act there only, reusing the prefix's cache.

    A change made only at the last position cannot affect the positions
    before it, so the prompt minus its last token runs once (its key/value
    cache is kept) and every later call runs a single token per text. This
    makes many ablation and enhancement checks on the same prompts cheap.
    Interventions must use ``positions="last:1"``.
    """

    def __init__(self, lm, texts: Sequence[str], batch_size: int = 32):
        check_batch_size(batch_size)
        self.lm, self.n = lm, len(texts)
        self.batches = []
        texts = list(texts)
        for i in range(0, len(texts), batch_size):
            self.batches.append(_prefix_cache(lm, texts[i:i + batch_size]))

    @timed("capture")
    def __call__(self, sites, interventions: Sequence = ()) -> dict[str, torch.Tensor]:
        bad = [iv for iv in interventions if getattr(iv, "positions", None) != "last:1"]
        if bad:
            raise ValueError(f"LastToken takes interventions with positions='last:1' only, got "
                             f"{sorted({b.positions for b in bad})}")
        items = resolve(self.lm, interventions)
        site_list = sorted(parse_sites(sites, self.lm.n_layers), key=lambda s: s.order)
        last = max(s.order for s in site_list)
        items = [(s, iv) for s, iv in items if s.order <= last]
        chunks: dict[str, list] = {str(s): [] for s in site_list}
        for enc_last, cache in self.batches:
            got = {}
            with torch.inference_mode(), self.lm.nn.trace(_over_prefix(self.lm, enc_last, cache), **self.lm.remote_kwargs) as tracer:
                values = apply_all(self.lm, items, 0, site_list)
                for s in site_list:
                    got[str(s)] = values[str(s)][:, -1].float().cpu()
                tracer.stop()
            for k, v in got.items():
                chunks[k].append(v)
        return {k: torch.cat(v) for k, v in chunks.items()}


def emotion_signal(lm, texts: Sequence[str] | LastToken, ref_dirs, interventions: Sequence = (),
                   layer: int | None = None, batch_size: int = 24) -> np.ndarray:
    """Each emotion's signal per scenario: ``[S, E]``.

    ``texts`` hold ``S`` scenarios x ``E`` instructed emotions, scenario-major
    (as ``sev_prompts(records, emotions=EMOTIONS, valences=[v])`` orders
    them). The signal of emotion ``e`` in scenario ``s`` is the projection
    on ``e``'s direction when the prompt asks for ``e`` minus its mean when
    the same scenario asks for the other emotions. A change that shifts
    every prompt alike (as knocking out any large set of components does)
    cancels; what the direction was defined by remains.

    ``texts`` may be a :class:`LastToken` over those texts, for interventions
    at the last position only (much faster when measuring many).
    """
    R = np.asarray(ref_dirs)
    E = R.shape[0]
    n = texts.n if isinstance(texts, LastToken) else len(texts)
    if n % E:
        raise ValueError(f"texts has {n} items, not a multiple of the {E} emotions")
    if isinstance(texts, LastToken):
        site = f"resid_post.{lm.n_layers - 1 if layer is None else layer}"
        p = (texts([site], interventions)[site].double().numpy() @ R.T).reshape(-1, E, E)
    else:
        p = projection(lm, texts, R, layer, interventions, batch_size).reshape(-1, E, E)  # [S, asked, direction]
    own = np.einsum("see->se", p)
    others = (p.sum(1) - own) / (E - 1)
    return own - others


def ablate(lm, circuit: Circuit, measure, mode: str = "zero", means: dict[str, torch.Tensor] | None = None,
           n_random: int = 5, seed: int = 0, positions: str = "all", baseline: np.ndarray | None = None) -> dict:
    """Drop of ``measure`` when the circuit is knocked out, beside random components of the same layers.

    ``measure(interventions)`` returns one number per item (e.g. a column of
    :func:`emotion_signal`, or :func:`projection`). Returns ``base``
    (unablated), ``circuit`` (drop per item) and ``random`` (drops,
    ``[n_random, items]``, one row per draw of :func:`random_like`).
    """
    base = np.asarray(measure([]) if baseline is None else baseline, dtype=float)
    drop = base - np.asarray(measure(ablation(circuit, mode, means, positions)), dtype=float)
    rand = [base - np.asarray(measure(ablation(random_like(circuit, lm, seed=seed + r), mode, means, positions)),
                              dtype=float) for r in range(n_random)]
    return {"base": base, "circuit": drop, "random": np.stack(rand) if rand else np.zeros((0, len(base)))}


@timed("capture")
def sublayer_influence(lm, texts: Sequence[str], local_dirs: dict[str, np.ndarray], ref_dirs,
                       alphas: Sequence[float] = (0.5, 1.0, 2.0), ref_layer: int | None = None,
                       layers: Iterable[int] | None = None, batch_size: int = 8, progress: bool = True) -> dict:
    """Paper B's sublayer influence ``I = delta / (alpha x sigma)``, averaged over alphas.

    For each sublayer (``attn_out.L`` or ``mlp_out.L``) and each row ``e``
    of the directions: add ``alpha x sigma x u`` at the last prompt
    position, where ``u = local_dirs[site][e]`` is the sublayer's own unit
    direction and ``sigma`` the RMS of the residual stream after that
    sublayer (``resid_mid.L`` / ``resid_post.L``) on ``texts``; ``delta``
    is the change of the projection of ``resid_post.ref_layer`` on
    ``ref_dirs[e]`` at that position, averaged over texts. Returns
    ``{"attn": [n_layers, E], "mlp": [n_layers, E], "sigma": {...}}`` (NaN
    for layers not measured); I = 1 means the dose arrives at full strength
    along the reference direction.

    A push at the last position changes nothing before it, so the prompt
    minus its last token runs once and its key/value cache is reused: each
    sublayer then costs one forward of a single token for every (text,
    direction, alpha) row.
    """
    from tqdm.auto import tqdm

    ref_layer = lm.n_layers - 1 if ref_layer is None else ref_layer
    layers = list(range(ref_layer + 1)) if layers is None else list(layers)
    R = torch.as_tensor(np.asarray(ref_dirs), dtype=torch.float32)
    E = R.shape[0]
    texts = list(texts)
    check_batch_size(batch_size)
    alphas = [float(a) for a in alphas]
    if not alphas or any(a == 0 for a in alphas):
        raise ValueError(f"alphas={alphas}: expected non-zero numbers")
    missing = [f"{k}.{l}" for l in layers for k in ("attn_out", "mlp_out") if f"{k}.{l}" not in local_dirs]
    if missing:
        raise ValueError(f"local_dirs lacks sites {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    resid_sites = [f"{k}.{l}" for l in layers for k in ("resid_mid", "resid_post")]
    rows = capture(lm, texts, resid_sites, pooling="none", progress=False)
    sigma = {s: float(torch.cat(rows[s]).pow(2).mean().sqrt()) for s in resid_sites}
    del rows
    out = {"attn": np.full((lm.n_layers, E), np.nan), "mlp": np.full((lm.n_layers, E), np.nan), "sigma": sigma}
    ref_site = parse_site(f"resid_post.{ref_layer}")
    A = len(alphas)
    sub = [(l, kind) for l in layers for kind in SUBLAYERS]
    doses = {}
    for layer, kind in sub:
        site = f"{'attn_out' if kind == 'attn' else 'mlp_out'}.{layer}"
        sig = sigma[f"{'resid_mid' if kind == 'attn' else 'resid_post'}.{layer}"]
        U = torch.as_tensor(np.asarray(local_dirs[site]), dtype=torch.float32)
        if U.shape != (E, lm.d_model):
            raise ValueError(f"local_dirs[{site!r}] has shape {tuple(U.shape)}, expected ({E}, {lm.d_model})")
        U = U / U.norm(dim=1, keepdim=True)
        doses[(layer, kind)] = (parse_site(site), sig, torch.stack([a * sig * U for a in alphas], 1).reshape(E * A, -1))
    deltas = {k: np.zeros((E, A)) for k in sub}

    def last_token(enc_last, cache, site=None, add=None):
        got = {}
        with torch.inference_mode(), lm.nn.trace(_over_prefix(lm, enc_last, cache), **lm.remote_kwargs) as tracer:
            if site is not None:
                x = read_site(lm, site)
                write_site(lm, site, x + add[:, None, :])
            got["h"] = read_site(lm, ref_site)[:, -1].float().cpu()
            tracer.stop()
        return got["h"]

    batches = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
    bar = tqdm(total=len(batches) * len(sub), desc="sublayer influence", disable=not progress, leave=False)
    for bt in batches:
        nb = len(bt)
        enc_last, cache = _prefix_cache(lm, bt, repeat=E * A)
        base = torch.einsum("neaD,eD->nea", last_token(enc_last, cache).reshape(nb, E, A, -1), R).numpy()
        for key in sub:
            site, sig, dose = doses[key]
            h = last_token(enc_last, cache, site, dose.repeat(nb, 1).to(lm.device, lm.dtype))
            proj = torch.einsum("neaD,eD->nea", h.reshape(nb, E, A, -1), R).numpy()
            deltas[key] += (proj - base).sum(0)
            bar.update()
    bar.close()
    for (layer, kind), d in deltas.items():
        sig = doses[(layer, kind)][1]
        out[kind][layer] = (d / len(texts) / (np.asarray(alphas)[None] * sig)).mean(1)
    return out


def summarise(drops: np.ndarray, random: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean effect of the circuit with a bootstrap interval over prompts, the random draws' mean, and their ratio."""
    m, lo, hi = bootstrap_ci(np.asarray(drops, float), n_boot=n_boot, seed=seed)
    r = float(np.mean(random)) if np.size(random) else float("nan")
    r_lo, r_hi = (bootstrap_ci(np.asarray(random, float).mean(0), n_boot=n_boot, seed=seed)[1:]
                  if np.size(random) else (float("nan"), float("nan")))
    return {"circuit": m, "circuit_lo": lo, "circuit_hi": hi, "random": r, "random_lo": r_lo, "random_hi": r_hi,
            "ratio": m / r if r > 0 else float("inf") if m > 0 else float("nan")}
