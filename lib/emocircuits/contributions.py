"""What each MLP neuron and attention head writes along an emotion direction (paper B, chapter 04):
contributions through the frozen post-norm scale, their per-emotion scores and how concentrated they are."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch


def _post_norm(lm, layer: int, kind: str):
    """The RMSNorm the layout applies to a sublayer's projection output before the residual add, else None."""
    return lm.hf_part(layer, lm.layout.mlp_out_norm if kind == "neuron" else lm.layout.attn_out_norm)


def _frozen_scale(lm, layer: int, kind: str, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s [N], g [d])`` with ``post_norm(raw) = s[:, None] * g * raw``, the norm's scale frozen per row."""
    norm = _post_norm(lm, layer, kind)
    if norm is None:
        return torch.ones(raw.shape[0], dtype=raw.dtype), torch.ones(raw.shape[1], dtype=raw.dtype)
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6))
    s = torch.rsqrt(raw.pow(2).mean(-1) + eps)
    g = lm.layout.norm_offset + norm.weight.detach().to(raw.dtype).cpu()
    return s, g


def _weight(lm, layer: int, kind: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    mod = lm.hf_part(layer, lm.layout.down_proj if kind == "neuron" else lm.layout.o_proj)
    bias = mod.bias.detach().double().cpu() if getattr(mod, "bias", None) is not None else None
    return mod.weight.detach().double().cpu(), bias


def as_directions(direction) -> tuple[torch.Tensor, bool]:
    v = torch.as_tensor(np.asarray(direction), dtype=torch.float64)
    if v.ndim == 1:
        return v[None], True
    if v.ndim != 2:
        raise ValueError(f"direction must be [d_model] or [n_directions, d_model], got shape {tuple(v.shape)}")
    return v, False


def neuron_contributions(lm, layer: int, mlp_act, direction) -> torch.Tensor:
    """Each MLP neuron's term in the MLP output's projection on ``direction``, per prompt.

    ``mlp_act`` is ``[N, d_mlp]`` (the down projection's input, see
    :func:`~emocircuits.activations.capture`); ``direction`` is ``[d_model]``
    or ``[E, d_model]``. Returns ``[N, d_mlp]`` (or ``[N, E, d_mlp]``) in
    float64; summed over neurons (plus the bias term, if the projection has
    one) it equals ``mlp_out . direction``.
    """
    return _contributions(lm, layer, "neuron", torch.as_tensor(mlp_act), direction)


def head_contributions(lm, layer: int, attn_z, direction) -> torch.Tensor:
    """Each head's term in the attention output's projection on ``direction``, per prompt.

    ``attn_z`` is ``[N, n_heads, head_dim]`` (the output projection's input).
    Returns ``[N, n_heads]`` (or ``[N, E, n_heads]``). On Llama-style
    models a head's term is exactly the drop of the projection at the
    layer's MLP input when that head is zeroed; on Gemma-style models it is
    that drop with the post-attention norm's scale held fixed.
    """
    z = torch.as_tensor(attn_z)
    if z.ndim != 3 or z.shape[1] != lm.n_heads:
        raise ValueError(f"attn_z must be [N, {lm.n_heads}, {lm.head_dim}], got shape {tuple(z.shape)}")
    return _contributions(lm, layer, "head", z, direction)


def _contributions(lm, layer: int, kind: str, x: torch.Tensor, direction) -> torch.Tensor:
    V, single = as_directions(direction)
    if V.shape[1] != lm.d_model:
        raise ValueError(f"direction has {V.shape[1]} dims, {lm.name} has d_model={lm.d_model}")
    W, bias = _weight(lm, layer, kind)  # [d_model, width]
    x = x.double().cpu()
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != W.shape[1]:
        raise ValueError(f"activations have width {flat.shape[1]}, layer {layer}'s projection expects {W.shape[1]}")
    raw = flat @ W.T + (bias if bias is not None else 0.0)
    s, g = _frozen_scale(lm, layer, kind, raw)
    read = W.T @ (g[:, None] * V.T)  # [width, E]: what a unit of each input coordinate writes along each v
    if kind == "neuron":
        out = flat[:, None, :] * read.T[None]  # [N, E, d_mlp]
    else:
        z = x  # [N, H, hd]
        r = read.T.reshape(V.shape[0], lm.n_heads, -1)  # [E, H, hd]
        out = torch.einsum("nhd,ehd->neh", z, r)
    out = out * s[:, None, None]
    return out[:, 0] if single else out


def scores_by_emotion(contrib: torch.Tensor, labels: Sequence[str], groups: Sequence[str],
                      emotions: Sequence[str], keep=None, centre: bool = True) -> torch.Tensor:
    """Mean contribution per emotion, ``[E, width]``, from ``[N, E, width]`` contributions.

    Row ``e`` averages, over the prompts instructed with emotion ``e`` (and
    kept by ``keep``, e.g. the judge's acceptance), each component's term
    along ``e``'s direction. With ``centre`` each group's (scenario and
    valence) mean over emotions is subtracted first, so what every emotion
    shares in a context does not count for any of them.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    if contrib.ndim != 3 or contrib.shape[0] != len(labels) or contrib.shape[1] != len(emotions):
        raise ValueError(f"contrib must be [N={len(labels)}, E={len(emotions)}, width], got {tuple(contrib.shape)}")
    keep = np.ones(len(labels), bool) if keep is None else np.asarray(keep, bool)
    c = contrib
    if centre:
        _, gid = np.unique(groups, return_inverse=True)
        gid = torch.as_tensor(gid)
        sums = torch.zeros((int(gid.max()) + 1,) + tuple(c.shape[1:]), dtype=c.dtype).index_add_(0, gid, c)
        counts = torch.bincount(gid).to(c.dtype)
        c = c - (sums / counts.reshape(-1, *([1] * (c.ndim - 1))))[gid]
    rows = []
    for e, emo in enumerate(emotions):
        m = torch.as_tensor((labels == emo) & keep)
        if not bool(m.any()):
            raise ValueError(f"no kept prompts for emotion {emo!r}")
        rows.append(c[m, e].mean(0))
    return torch.stack(rows)


def tail_share(scores, fractions: Sequence[float] = (0.01, 0.05)) -> dict[float, float]:
    """Share of the positive mass of ``scores`` carried by its top ``fraction`` of components."""
    s = np.sort(np.clip(np.asarray(scores, dtype=float).ravel(), 0, None))[::-1]
    total = s.sum()
    if total <= 0:
        return {f: float("nan") for f in fractions}
    return {f: float(s[:max(1, int(round(f * len(s))))].sum() / total) for f in fractions}


def component_scores(lm, acts: dict[str, torch.Tensor], dirs: dict[str, np.ndarray], labels: Sequence[str],
                     groups: Sequence[str], emotions: Sequence[str], layers: Iterable[int] | None = None,
                     keep=None, centre: bool = True, progress: bool = False):
    """Every neuron's and head's mean contribution per emotion: ``({layer: [E, d_mlp]}, {layer: [E, n_heads]})``.

    Neurons are read along the emotion direction at ``resid_post.L`` (what
    the MLP writes into), heads along the direction at ``resid_mid.L`` (the
    layer's MLP input), as in paper B. ``acts`` must hold ``mlp_act.L``,
    ``attn_z.L`` for those layers; ``dirs`` comes from :func:`directions`.
    """
    from tqdm.auto import tqdm

    layers = list(range(lm.n_layers)) if layers is None else list(layers)
    neurons, heads = {}, {}
    for layer in tqdm(layers, desc="component scores", disable=not progress, leave=False):
        cn = neuron_contributions(lm, layer, acts[f"mlp_act.{layer}"], dirs[f"resid_post.{layer}"])
        neurons[layer] = scores_by_emotion(cn, labels, groups, emotions, keep, centre).numpy()
        ch = head_contributions(lm, layer, acts[f"attn_z.{layer}"], dirs[f"resid_mid.{layer}"])
        heads[layer] = scores_by_emotion(ch, labels, groups, emotions, keep, centre).numpy()
    return neurons, heads
