"""Emotion circuits as values (paper B, chapter 04): a :class:`Circuit` is a list of MLP neurons and
attention heads with where they came from.

* :func:`allocate` and :func:`assemble` turn component scores
  (:mod:`.contributions`) and sublayer influences (:mod:`.causal`) into a
  circuit under a budget; :func:`top_components` and :func:`random_like`
  give the unbudgeted and the random comparison.
* :func:`ablation`, :func:`enhance`, :func:`modulation` and
  :func:`direction_steering` turn a circuit, or emotion directions, into
  interventions (:mod:`.interventions`) for a forward pass or generation.

Measuring what a circuit does is in :mod:`.causal`; chapter 04's captures
are in :mod:`.emotion_acts`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .cache import atomic_write_text
from .interventions import Add, Scale, Set

KINDS = ("neuron", "head")


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

    def shared_with(self, other: "Circuit") -> dict[str, float]:
        """``{kind: the share of this circuit's components (of all of them) that other has too}``; the kinds'
        shares add up to the share of all components in common."""
        return {kind: len({(c.layer, c.index) for c in self.components if c.kind == kind}
                          & {(c.layer, c.index) for c in other.components if c.kind == kind}) / len(self)
                for kind in KINDS}

    def chance_shared_with(self, other: "Circuit", lm) -> dict[str, float]:
        """The baseline of :meth:`shared_with`: the share this circuit would have in common with ``other``,
        by kind, were both drawn at random within each layer with their counts per layer (the expected
        overlap of two random draws of a and b of n components is a * b / n)."""
        ca, cb = self.counts(lm.n_layers), other.counts(lm.n_layers)
        return {kind: float((ca[:, k] * cb[:, k]).sum() / width / len(self))
                for k, (kind, width) in enumerate(zip(KINDS, (lm.d_mlp, lm.n_heads)))}

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
    (:func:`emocircuits.causal.sublayer_influence`).
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


def assemble_each(lm, emotions: Sequence[str], neuron_scores: dict[int, np.ndarray],
                  head_scores: dict[int, np.ndarray], influence: dict[str, np.ndarray], budget: dict,
                  out_dir: str | Path | None = None, suffix: str = "") -> dict[str, Circuit]:
    """Each emotion's circuit (:func:`assemble`) from scores per layer with one row per emotion
    (``neuron_scores[layer][e]``, in ``emotions`` order) and influences per layer and emotion
    (``influence["attn"][:, e]``, ``influence["mlp"][:, e]``, as :func:`.causal.sublayer_influence` gives
    them), under ``budget`` (:func:`default_budget`). With ``out_dir`` each is written to
    ``out_dir / {emotion}{suffix}.json``."""
    out = {}
    for e, emo in enumerate(emotions):
        out[emo] = assemble(emo, lm.name, {l: neuron_scores[l][e] for l in range(lm.n_layers)},
                            {l: head_scores[l][e] for l in range(lm.n_layers)},
                            attn_influence=influence["attn"][:, e], mlp_influence=influence["mlp"][:, e], **budget)
        if out_dir is not None:
            out[emo].to_json(Path(out_dir) / f"{emo}{suffix}.json")
    return out


def pairwise(measure, circuits: dict[str, Circuit], names: Sequence[str]) -> dict[str, np.ndarray]:
    """``{kind: matrix}`` with ``matrix[i, j] = measure(circuits[names[i]], circuits[names[j]])[kind]``, for a
    measure by kind such as :meth:`Circuit.shared_with` or :meth:`Circuit.chance_shared_with`."""
    vals = {(a, b): measure(circuits[a], circuits[b]) for a in names for b in names}
    return {kind: np.array([[vals[a, b][kind] for b in names] for a in names]) for kind in KINDS}


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
