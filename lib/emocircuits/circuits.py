"""Emotion circuits: neuron and head contributions, causal checks, sublayer influence, assembly (chapter 04).

Paper B's pipeline, on any registry model, with the causal checks its code
lacks. Everything is measured at the last prompt token.

* :func:`neuron_contributions` and :func:`head_contributions` split what a
  sublayer writes along an emotion direction into one term per MLP neuron
  (``a_i * W_down[:, i] . v``) or per attention head
  (``W_O[:, head] z_head . v``). On Gemma-style models each sublayer's
  output passes through an RMSNorm before the residual add; we freeze that
  norm's scale per prompt, so the terms still add up exactly to the
  sublayer's output along ``v``.
* :func:`ablate` and :func:`random_like` compare knocking out a circuit's
  components with knocking out as many random components of the same
  layers.
* :func:`sublayer_influence` injects a dose of a sublayer's local emotion
  direction at its output and measures what arrives at a reference layer.
* :func:`allocate` and :func:`assemble` turn scores and influences into a
  :class:`Circuit` under a budget; :func:`modulation` turns a circuit into
  interventions for generation.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from . import datasets as ds
from .activations import capture, check_batch_size
from .cache import atomic_write_text
from .interventions import Add, Scale, Set, apply_all, resolve
from .protocol import refuse_test_records
from .probes import centred_centroids
from .profiling import timed
from .sites import all_layers, parse_site, parse_sites, read_site, write_site
from .stats import bootstrap_ci

KINDS = ("neuron", "head")
SUBLAYERS = ("attn", "mlp")


# ---------------------------------------------------------------------------
# linear read-out of a sublayer's output


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


def _as_dirs(direction) -> tuple[torch.Tensor, bool]:
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
    V, single = _as_dirs(direction)
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


# ---------------------------------------------------------------------------
# circuits


@dataclass(frozen=True)
class Component:
    layer: int
    kind: str  # "neuron" or "head"
    index: int
    score: float = 0.0

    @property
    def site(self) -> str:
        return f"{'mlp_act' if self.kind == 'neuron' else 'attn_z'}.{self.layer}"


@dataclass
class Circuit:
    """Components of one emotion's circuit, with where they came from."""

    emotion: str
    model: str
    components: list[Component]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.components)

    def by_site(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for c in self.components:
            out.setdefault(c.site, []).append(c.index)
        return out

    def counts(self, n_layers: int) -> np.ndarray:
        """``[n_layers, 2]``: neurons and heads per layer."""
        out = np.zeros((n_layers, 2), int)
        for c in self.components:
            out[c.layer, KINDS.index(c.kind)] += 1
        return out

    def top(self, share: float) -> "Circuit":
        """The highest-scoring ``share`` of each kind's components, ranked over all layers.

        Neurons are ranked against neurons and heads against heads (their
        scores are in different units); each kind keeps ``ceil(share x its
        count)``. ``top(1.0)`` keeps every component. The "top-k" of the
        causal checks: compare it with :func:`random_like` of the result.
        """
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ValueError(f"share={share!r}: expected a number in (0, 1], the part of each kind to keep")
        keep = []
        for kind in KINDS:
            own = sorted((c for c in self.components if c.kind == kind), key=lambda c: -c.score)
            keep += own[: math.ceil(round(share * len(own), 9))]
        return Circuit(self.emotion, self.model, keep, {"share": float(share), "of": len(self.components)})

    def to_json(self, path) -> Path:
        d = {"emotion": self.emotion, "model": self.model, "meta": self.meta,
             "components": [asdict(c) for c in self.components]}
        return atomic_write_text(Path(path), json.dumps(d, indent=1))

    @classmethod
    def from_json(cls, path) -> "Circuit":
        try:
            d = json.loads(Path(path).read_text())
            comps = [Component(int(c["layer"]), str(c["kind"]), int(c["index"]), float(c.get("score", 0.0)))
                     for c in d["components"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a circuit file ({err}); expected JSON written by Circuit.to_json") from None
        bad = [c for c in comps if c.kind not in KINDS]
        if bad:
            raise ValueError(f"{path}: component kinds {sorted({c.kind for c in bad})}; expected {KINDS}")
        return cls(d["emotion"], d["model"], comps, d.get("meta", {}))


def default_budget(lm) -> dict:
    """Paper B's budget scaled to ``lm``: the same shares of all neurons and heads, minimums scaled alike.

    Paper B (Llama-3.2-3B, 28 layers x 8192 neurons x 24 heads): 392 neurons
    and 168 heads, at least 4 neurons and 2 heads per layer. Returns keyword
    arguments for :func:`assemble`.
    """
    n_neurons = max(lm.n_layers, round(392 / (28 * 8192) * lm.n_layers * lm.d_mlp))
    n_heads = max(lm.n_layers, round(168 / (28 * 24) * lm.n_layers * lm.n_heads))
    min_neurons = max(1, round(4 * n_neurons / 392))
    min_heads = max(1, round(2 * n_heads / 168))
    return {"n_neurons": int(n_neurons), "n_heads": int(n_heads), "min_neurons": int(min_neurons),
            "min_heads": int(min_heads), "cap": 0.4}


def allocate(influence, total: int, capacity: int, minimum: int, cap: float = 0.4) -> np.ndarray:
    """Split ``total`` components over layers in proportion to positive ``influence``.

    Every layer gets ``minimum`` (or its whole ``capacity`` if smaller); no
    layer gets more than ``cap`` of ``total`` or more than ``capacity``;
    what a capped layer cannot take goes to the others (water-filling).
    Integer counts by largest remainder; returns ``[n_layers]`` ints that
    sum to ``total``.
    """
    w = np.clip(np.nan_to_num(np.asarray(influence, dtype=float)), 0, None)
    n = len(w)
    hi = np.full(n, min(capacity, max(minimum, int(np.floor(cap * total)))))
    lo = np.full(n, min(minimum, capacity))
    if lo.sum() > total:
        raise ValueError(f"total={total} is below the per-layer minimum ({minimum} x {n} layers)")
    if hi.sum() < total:
        raise ValueError(f"total={total} does not fit: at most {hi.sum()} with cap={cap} and capacity={capacity}")
    if w.sum() == 0:
        w = np.ones(n)
    alloc = lo.astype(float)
    free = np.ones(n, bool)
    for _ in range(n + 1):  # water-filling: give the rest by weight, freeze layers that hit their ceiling
        rest = total - alloc[~free].sum() - lo[free].sum()
        share = np.where(free, w, 0.0)
        share = share / share.sum() * rest if share.sum() > 0 else np.where(free, rest / free.sum(), 0.0)
        trial = np.where(free, lo + share, alloc)
        over = free & (trial > hi)
        if not over.any():
            alloc = trial
            break
        alloc[over], free[over] = hi[over], False
    counts = np.floor(alloc).astype(int)
    order = np.argsort(-(alloc - counts), kind="stable")
    for i in order:
        if counts.sum() >= total:
            break
        if counts[i] < hi[i]:
            counts[i] += 1
    return counts


def assemble(emotion: str, model: str, neuron_scores: dict[int, np.ndarray], head_scores: dict[int, np.ndarray],
             attn_influence, mlp_influence, n_neurons: int, n_heads: int, min_neurons: int = 4,
             min_heads: int = 2, cap: float = 0.4) -> Circuit:
    """Paper B's assembly: per-layer quotas from sublayer influence, then each layer's top-scoring components.

    ``neuron_scores[layer]`` / ``head_scores[layer]`` are one emotion's mean
    contributions (:func:`scores_by_emotion`); ``attn_influence`` and
    ``mlp_influence`` are that emotion's per-layer influences
    (:func:`sublayer_influence`).
    """
    layers = sorted(neuron_scores)
    if sorted(head_scores) != layers or len(attn_influence) != len(layers) or len(mlp_influence) != len(layers):
        raise ValueError("neuron_scores, head_scores and the influences must cover the same layers")
    width_n = len(next(iter(neuron_scores.values())))
    width_h = len(next(iter(head_scores.values())))
    qn = allocate(mlp_influence, n_neurons, width_n, min_neurons, cap)
    qh = allocate(attn_influence, n_heads, width_h, min_heads, cap)
    comps = []
    for li, layer in enumerate(layers):
        for kind, scores, q in (("neuron", neuron_scores[layer], qn[li]), ("head", head_scores[layer], qh[li])):
            s = np.asarray(scores, dtype=float)
            for idx in np.argsort(-s, kind="stable")[:q]:
                comps.append(Component(int(layer), kind, int(idx), float(s[idx])))
    meta = {"n_neurons": int(n_neurons), "n_heads": int(n_heads), "min_neurons": min_neurons,
            "min_heads": min_heads, "cap": cap}
    return Circuit(emotion, model, comps, meta)


def top_components(emotion: str, model: str, neuron_scores: dict[int, np.ndarray],
                   head_scores: dict[int, np.ndarray], k: int, kind: str) -> Circuit:
    """The ``k`` highest-scoring components of one kind over all layers (no quotas)."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    src = neuron_scores if kind == "neuron" else head_scores
    flat = [(float(s), int(layer), int(i)) for layer, row in src.items() for i, s in enumerate(np.asarray(row))]
    flat.sort(key=lambda t: -t[0])
    if k > len(flat):
        raise ValueError(f"k={k} exceeds the {len(flat)} {kind}s available")
    return Circuit(emotion, model, [Component(layer, kind, i, s) for s, layer, i in flat[:k]], {"k": k})


def random_like(circuit: Circuit, lm, seed: int = 0, strict: bool = False) -> Circuit:
    """As many random components of each kind in each layer as ``circuit`` has, avoiding its own.

    Where a layer has fewer components outside the circuit than needed (a
    small model's few heads), the rest are drawn from the circuit's own
    components of that layer, and ``meta["overlap"]`` counts them; with
    ``strict=True`` that raises instead.
    """
    rng = np.random.default_rng(seed)
    taken = {(c.layer, c.kind, c.index) for c in circuit.components}
    comps, overlap = [], 0
    for layer, (nn_, nh) in enumerate(circuit.counts(lm.n_layers)):
        for kind, k, width in (("neuron", nn_, lm.d_mlp), ("head", nh, lm.n_heads)):
            if k == 0:
                continue
            pool = [i for i in range(width) if (layer, kind, i) not in taken]
            if k > len(pool):
                if strict:
                    raise ValueError(f"layer {layer} has only {len(pool)} {kind}s outside the circuit, need {k}")
                own = [i for i in range(width) if (layer, kind, i) in taken]
                pick = pool + rng.choice(own, size=k - len(pool), replace=False).tolist()
                overlap += k - len(pool)
            else:
                pick = rng.choice(pool, size=k, replace=False).tolist()
            comps += [Component(layer, kind, int(i)) for i in pick]
    return Circuit(circuit.emotion, circuit.model, comps, {"random_like": True, "seed": seed, "overlap": overlap})


# ---------------------------------------------------------------------------
# interventions built from circuits


def component_means(acts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean activation over prompts per ``mlp_act`` / ``attn_z`` site (for mean ablation)."""
    return {k: torch.as_tensor(v).float().mean(0) for k, v in acts.items()}


def ablation(circuit: Circuit, mode: str = "zero", means: dict[str, torch.Tensor] | None = None,
             positions: str = "all") -> list[Set]:
    """Interventions that knock out the circuit's components.

    ``zero`` sets each component to 0; ``mean`` sets it to its mean over a
    reference set of prompts (``means`` from :func:`component_means`), which
    keeps the activation in its usual range.
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode={mode!r}: expected 'zero' or 'mean'")
    if mode == "mean" and means is None:
        raise ValueError("mode='mean' needs means (from component_means)")
    out = []
    for site, idx in circuit.by_site().items():
        if mode == "zero":
            val = 0.0
        else:
            if site not in means:
                raise ValueError(f"means lacks site {site}")
            val = torch.as_tensor(means[site])[torch.as_tensor(idx)]
        out.append(Set(site, idx, val, positions=positions))
    return out


def enhance(circuit: Circuit, factor: float, positions: str = "all") -> list[Scale]:
    """Interventions that multiply the circuit's components by ``factor`` (> 1 enhances)."""
    return [Scale(site, idx, factor, positions=positions) for site, idx in circuit.by_site().items()]


def _adds(circuit: Circuit, values: dict[str, torch.Tensor], positions: str,
          head_positions: str | None = None) -> list[Add]:
    """One Add per site whose vector is ``values[site]`` at the circuit's components and 0 elsewhere,
    acting at ``positions`` (heads' sites at ``head_positions`` when given)."""
    out = []
    for site, idx in circuit.by_site().items():
        if site not in values:
            raise ValueError(f"values lack site {site}")
        v = torch.as_tensor(values[site]).float()  # [d_mlp] or [n_heads, head_dim]
        vec = torch.zeros_like(v)
        vec[torch.as_tensor(idx)] = v[torch.as_tensor(idx)]
        at = head_positions if head_positions is not None and site.startswith("attn_z.") else positions
        out.append(Add(site, vec.reshape(-1), alpha=1.0, positions=at))
    return out


def group_centred_means(acts: dict[str, torch.Tensor], labels: Sequence[str], groups: Sequence[str],
                        emotions: Sequence[str], keep=None) -> dict[str, torch.Tensor]:
    """Per site, ``[E, ...]``: each emotion's mean activation after subtracting each group's mean over emotions.

    Paper B's modulation vector for a component: what the component does
    for this emotion beyond what it does for every emotion in that context.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    keep = np.ones(len(labels), bool) if keep is None else np.asarray(keep, bool)
    out = {}
    for site, x in acts.items():
        x = torch.as_tensor(x).double().clone()
        for gname in np.unique(groups):
            m = torch.as_tensor(groups == gname)
            per = torch.stack([x[m & torch.as_tensor(labels == e)].mean(0) for e in emotions])
            x[m] -= per.mean(0)
        out[site] = torch.stack([x[torch.as_tensor((labels == e) & keep)].mean(0) for e in emotions]).float()
    return out


def modulation(circuit: Circuit, centred_means: dict[str, torch.Tensor], emotions: Sequence[str],
               scale: float, positions: str = "last:1", head_positions: str | None = None) -> list[Add]:
    """Paper B's circuit modulation: add ``scale x`` the emotion's group-centred mean at each component.

    Acts at the last prompt position and every generated one (``last:1``) on
    every forward pass of generation; ``centred_means`` from
    :func:`group_centred_means` over the circuit's sites. ``head_positions``
    (default: ``positions``) sets the heads' positions apart from the
    neurons': paper B's released code pushes its heads at every position
    (``"all"``) and its neurons at the last one.
    """
    e = list(emotions).index(circuit.emotion)
    return _adds(circuit, {s: scale * v[e] for s, v in centred_means.items()}, positions, head_positions)


def direction_steering(dirs: dict[str, np.ndarray], emotions: Sequence[str], emotion: str, alpha: float,
                       rms: dict[int, float], layers: Sequence[int], positions: str = "last:1") -> list[Add]:
    """Paper B's steering-vector baseline: add the emotion's direction at ``resid_post`` of ``layers``.

    Each layer gets ``alpha * rms[layer] / len(layers)`` times the unit
    direction, so ``alpha`` is the total push in units of the residual
    stream's RMS at the pushed position, whatever the number of layers.
    Same positions as :func:`modulation` (the last prompt position and every
    generated one).
    """
    if emotion not in emotions:
        raise ValueError(f"emotion {emotion!r} is not one of {list(emotions)}")
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty: give the resid_post layers to push at")
    missing = [la for la in layers if f"resid_post.{la}" not in dirs or la not in rms]
    if missing:
        raise ValueError(f"no direction or RMS for resid_post of layers {missing}")
    e = list(emotions).index(emotion)
    return [Add(f"resid_post.{la}", torch.as_tensor(dirs[f"resid_post.{la}"][e], dtype=torch.float32),
                alpha=alpha * rms[la] / len(layers), positions=positions) for la in layers]


# ---------------------------------------------------------------------------
# measurements


def projection(lm, texts: Sequence[str], direction, layer: int | None = None, interventions: Sequence = (),
               batch_size: int = 16, site_kind: str = "resid_post") -> np.ndarray:
    """Projection of the last prompt token's ``resid_post.layer`` on ``direction`` ([N] or [N, E])."""
    layer = lm.n_layers - 1 if layer is None else layer
    site = f"{site_kind}.{layer}"
    x = capture(lm, list(texts), [site], interventions=interventions, batch_size=batch_size, progress=False)[site]
    V, single = _as_dirs(direction)
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


# ---------------------------------------------------------------------------
# the pipeline's steps over all layers (what chapter 04 calls)


def directions(acts: dict[str, torch.Tensor], labels: Sequence[str], groups: Sequence[str],
               emotions: Sequence[str]) -> dict[str, np.ndarray]:
    """Paper B's context-agnostic unit direction per emotion at every residual-width site: ``{site: [E, d]}``."""
    out = {}
    for site, x in acts.items():
        if site.split(".")[0] in ("mlp_act", "attn_z"):
            continue
        out[site] = centred_centroids(torch.as_tensor(x).double().numpy(), labels, groups, emotions)
    return out


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


def summarise(drops: np.ndarray, random: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean effect of the circuit with a bootstrap interval over prompts, the random draws' mean, and their ratio."""
    m, lo, hi = bootstrap_ci(np.asarray(drops, float), n_boot=n_boot, seed=seed)
    r = float(np.mean(random)) if np.size(random) else float("nan")
    r_lo, r_hi = (bootstrap_ci(np.asarray(random, float).mean(0), n_boot=n_boot, seed=seed)[1:]
                  if np.size(random) else (float("nan"), float("nan")))
    return {"circuit": m, "circuit_lo": lo, "circuit_hi": hi, "random": r, "random_lo": r_lo, "random_hi": r_hi,
            "ratio": m / r if r > 0 else float("inf") if m > 0 else float("nan")}


def best_at_coherence(tables: dict, levels: Sequence[float] | None = None):
    """Each method's best accuracy among its settings that keep at least a given coherent share.

    ``tables`` maps a method's name to a table with one row per strength
    and columns ``accuracy`` and ``coherent`` (shares of replies). For a
    coherence requirement ``c``, a method's value is the highest accuracy
    of its settings with ``coherent >= c`` (NaN when none reaches ``c``):
    the comparison "at equal coherence" without interpolating between grid
    points. ``levels`` default to every coherent share any method reached.
    Returns a pandas DataFrame indexed by the requirement, one column per
    method.
    """
    import pandas as pd

    if not tables:
        raise ValueError("tables is empty: expected {method: table with accuracy and coherent columns}")
    for name, t in tables.items():
        missing = sorted({"accuracy", "coherent"} - set(t.columns))
        if missing:
            raise ValueError(f"tables[{name!r}] needs rows with columns accuracy and coherent; missing {missing}")
        if len(t) == 0:
            raise ValueError(f"tables[{name!r}] has no rows")
    if levels is None:
        levels = sorted({float(c) for t in tables.values() for c in t.coherent})
    out = {name: [float(t.accuracy[t.coherent >= c].max()) if (t.coherent >= c).any() else float("nan")
                  for c in levels] for name, t in tables.items()}
    return pd.DataFrame(out, index=pd.Index([float(c) for c in levels], name="coherent share at least"))


def choose_strength(replies, min_coherent: float = 0.9, by: str | None = None, option: str = "scale"):
    """The strength (or other candidate) a tuning run picks: the smallest that reaches the best accuracy
    among those keeping at least ``min_coherent`` of the replies coherent; when none keeps that many, the
    most accurate one.

    ``replies`` is a table with one row per judged reply and columns
    ``scale`` (the strength it was generated with), ``hit`` (judged as the
    target), ``coherent`` (booleans) and ``record_id`` (the data record the
    prompt was built from): a reply made from a test record is refused
    (:func:`emocircuits.protocol.refuse_test_records`), so the choice reads
    discovery data only. With ``by`` (a column, e.g.
    ``"emotion"``) the rule is applied to each group's replies on its own
    and a dict {group: strength} is returned; otherwise one value.
    ``option`` names the column holding the candidates, if not ``scale``
    (e.g. a way of building the circuits): ties go to the first candidate in
    that column's sort order, so give it an ordered categorical to rank them.
    A reply without its candidate (a missing value in that column) is an error.
    """
    import pandas as pd

    if not isinstance(replies, pd.DataFrame):
        raise ValueError(f"replies must be a pandas DataFrame of judged replies; got {type(replies).__name__}")
    if not 0 <= min_coherent <= 1:
        raise ValueError(f"min_coherent must be a share in [0, 1]; got {min_coherent}")
    need = {option, "hit", "coherent", "record_id"} | ({by} if by is not None else set())
    missing = sorted(need - set(replies.columns))
    if missing:
        raise ValueError(f"replies needs columns {sorted(need)}; missing {missing}")
    if len(replies) == 0:
        raise ValueError("replies has no rows: nothing to choose a strength from")
    refuse_test_records(replies["record_id"], "choose_strength: replies['record_id']")
    if replies[option].isna().any():
        raise ValueError(f"replies[{option!r}] has missing values: every reply needs the candidate it was made with")

    def rule(rows):
        t = rows.groupby(option, observed=True).agg(accuracy=("hit", "mean"), coherent=("coherent", "mean"))
        ok = t[t.coherent >= min_coherent].sort_index()
        pool = ok if len(ok) else t.sort_index()
        best = pool.accuracy.idxmax()  # idxmax takes the first (smallest) candidate among ties
        return float(best) if option == "scale" else best

    if by is None:
        return rule(replies)
    if replies[by].isna().any():
        raise ValueError(f"replies[{by!r}] has missing values: every reply needs its group to pick per {by}")
    return {key: rule(rows) for key, rows in replies.groupby(by, sort=False)}
