"""Paper A's empathy probes on contrastive pairs (chapters 03 and 06; the ``emocircuits probe`` and
``score`` commands).

* :func:`fit_pair_probes`: the mean-difference direction at every layer from the train pairs, each
  scored on the test pairs against random and principal-component baselines (:mod:`.readout`), with
  the layer chosen by cross-validation on the train pairs (:func:`cv_layer_auroc`);
* :func:`evaluate_pairs` and :func:`transfer_pairs` score a fitted probe on other pairs;
* :func:`save_probe` / :func:`load_probe` / :func:`score_texts`: a probe on disk and applied to texts.

Reading directions and their statistics is :mod:`.readout`'s job; Persona Vectors' direction is in
:mod:`.personas`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.model_selection import KFold, LeaveOneGroupOut

from .activations import capture
from .cache import atomic_write, atomic_write_text
from .datasets import DataError, eia_prompt
from .readout import Detection, auroc, evaluate_direction, mean_diff, midpoint, pc_baseline, random_baseline
from .sites import model_layers


def reply_texts(lm, users: Sequence[str], replies: Sequence[str], system: str | None = None
                ) -> tuple[list[str], list[int]]:
    """Each reply as the assistant's turn after its user message; returns texts and response starts."""
    if len(users) != len(replies):
        raise ValueError(f"{len(users)} user messages for {len(replies)} replies")
    prompts = [lm.chat_prompt(u, system=system) for u in users]
    return [p + r for p, r in zip(prompts, replies)], [len(p) for p in prompts]


def pair_texts(lm, records, scenarios: dict | None = None) -> tuple[list[str], list[str], list[int]]:
    """Chat texts for both sides of each pair: the prompt, then the reply as the assistant's turn.

    The prompt is the EIA game prompt when ``scenarios`` (id -> scenario)
    holds the pair's scenario, else the pair's ``scenario`` text itself.
    Returns ``(positive_texts, negative_texts, response_starts)``.
    """
    pos, neg, starts = [], [], []
    for r in records:
        user = eia_prompt(scenarios[r.scenario]) if scenarios and r.scenario in scenarios else r.scenario
        prompt = lm.chat_prompt(user)
        pos.append(prompt + r.positive)
        neg.append(prompt + r.negative)
        starts.append(len(prompt))
    return pos, neg, starts


def _capture_pairs(lm, records, scenarios: dict | None, sites: Sequence[str], pooling, progress: bool = False):
    """Both sides of ``records`` as chat texts (positives first, then negatives), pooled over their replies at
    ``sites``: what :func:`activations.capture` returns for them. Captures are kept in memory
    (``cache="memory"``): fitting, scoring, transferring and cross-validating on pairs already read at the
    same sites and pooling do not run their texts again."""
    pos, neg, starts = pair_texts(lm, records, scenarios)
    return capture(lm, pos + neg, sites, pooling=pooling, response_starts=starts + starts, progress=progress,
                   cache="memory")


def best_layer(scores: dict) -> int:
    """The layer with the highest score (ties: the earliest); ``scores`` maps layers (ints or strings) to numbers."""
    return int(max(scores, key=lambda l: (scores[l], -int(l))))


@dataclass
class PairProbe:
    """Mean-difference directions for every layer, with what is needed to score new text."""

    model: str
    pooling: str
    site_kind: str
    layers: list[int]
    directions: dict[int, np.ndarray]
    thresholds: dict[int, float]
    metrics: dict = field(default_factory=dict)

    @property
    def best_layer(self) -> int:
        return int(self.metrics["best_layer"])

    def _layer_metrics(self, layer: int) -> dict:
        """The saved metrics of ``layer`` (string keys only because they are saved as JSON)."""
        got = self.metrics.get("layers", {}).get(str(int(layer)))
        if got is None:
            raise KeyError(f"layer {layer} was not fitted; the probe has layers {self.layers}")
        return got

    def at(self, layer: int) -> Detection:
        """Held-out detection at ``layer`` (an int), typed."""
        got = self._layer_metrics(layer)
        return Detection(got["auroc"], tuple(got["auroc_ci"]), got["accuracy"], tuple(got["accuracy_ci"]),
                         got["cohens_d"], tuple(got["cohens_d_ci"]))

    def cv_auroc(self, layer: int) -> float:
        """The cross-validated AUROC on the train pairs at ``layer``, by which :attr:`best_layer` was chosen."""
        return float(self._layer_metrics(layer)["cv_auroc"])


def fit_pair_probe(lm, records, scenarios: dict | None = None, layers: Sequence[int] | None = None,
                   pooling: str = "mean_all", site_kind: str = "resid_post", seed: int = 0,
                   n_random: int = 100, progress: bool = False) -> PairProbe:
    """Fit mean-difference probes on the train split of ``records`` and evaluate on the test split.

    Records without a ``split`` get a seeded 70/30 split. The probe's layer
    (``best_layer``) is chosen on the train pairs alone, before the test
    pairs are read: the highest cross-validated AUROC (leave one scenario
    out; ties: the earliest). ``metrics["test_best_layer"]`` is where test
    AUROC peaks, an optimistic choice kept for exploration.
    """
    return fit_pair_probes(lm, records, scenarios, layers, (pooling,), site_kind, seed, n_random, progress)[pooling]


def fit_pair_probes(lm, records, scenarios: dict | None = None, layers: Sequence[int] | None = None,
                    poolings: Sequence[str] = ("mean_all",), site_kind: str = "resid_post", seed: int = 0,
                    n_random: int = 100, progress: bool = False) -> dict[str, PairProbe]:
    """:func:`fit_pair_probe` for several poolings from one forward pass: ``{pooling: PairProbe}``."""
    records = list(records)
    if len(records) < 4:
        raise DataError(f"need at least 4 pairs to fit and test a probe, got {len(records)}")
    splits = [getattr(r, "split", None) for r in records]
    if any(s is None for s in splits):
        rng = np.random.default_rng(seed)
        test_idx = set(rng.choice(len(records), size=max(2, round(0.3 * len(records))), replace=False).tolist())
        splits = ["test" if i in test_idx else "train" for i in range(len(records))]
    tr = np.array([s == "train" for s in splits])
    if tr.sum() < 2 or (~tr).sum() < 2:
        raise DataError(f"need at least 2 train and 2 test pairs, got {tr.sum()} and {(~tr).sum()}")
    layers = model_layers(lm, layers)
    poolings = tuple(poolings)
    sites = [f"{site_kind}.{l}" for l in layers]
    by_pool = _capture_pairs(lm, records, scenarios, sites, poolings, progress)
    n = len(records)
    out = {}
    for pooling, acts in by_pool.items():
        directions, thresholds, per_layer = {}, {}, {}
        for l, s in zip(layers, sites):
            X = acts[s].double().numpy()
            P, N = X[:n], X[n:]
            d = mean_diff(P[tr], N[tr])
            thr = midpoint(d, P[tr], N[tr])
            det = evaluate_direction(d, P[~tr], N[~tr], threshold=thr, seed=seed)
            directions[l], thresholds[l] = d, thr
            per_layer[str(l)] = det.as_dict()
        # the layer is chosen on the train pairs alone (cross-validated AUROC), before any test pair is read;
        # the layer where test AUROC peaks is kept beside it, for exploration
        cv, rule = _train_cv_aurocs({l: acts[s].double().numpy() for l, s in zip(layers, sites)}, n, tr,
                                    [getattr(r, "scenario", None) for r in records], seed)
        for l in layers:
            per_layer[str(l)]["cv_auroc"] = cv[l]
        best = best_layer(cv)
        X = acts[f"{site_kind}.{best}"].double().numpy()
        split = (X[:n][tr], X[n:][tr], X[:n][~tr], X[n:][~tr])
        rb = random_baseline(*split, n=n_random, seed=seed)
        ru = random_baseline(*split, n=n_random, seed=seed, oriented=False)  # the same draws, unsigned
        pcb = pc_baseline(*split, k=min(3, 2 * int(tr.sum())))
        metrics = {"model": lm.name, "pooling": pooling, "site": site_kind, "best_layer": best, "layer_rule": rule,
                   "test_best_layer": best_layer({l: per_layer[str(l)]["auroc"] for l in layers}),
                   "n_train": int(tr.sum()), "n_test": int((~tr).sum()), "seed": seed, "layers": per_layer,
                   "random_baseline": {"mean": rb["mean"], "p95": rb["p95"], "d_mean": rb["d_mean"],
                                       "d_p95": rb["d_p95"], "n": n_random, "layer": best},
                   "random_baseline_unoriented": {"mean": ru["mean"], "p95": ru["p95"], "d_mean": ru["d_mean"],
                                                  "d_p95": ru["d_p95"], "n": n_random, "layer": best},
                   "pc_baseline": {**pcb, "layer": best}}
        out[pooling] = PairProbe(lm.name, pooling, site_kind, layers, directions, thresholds, metrics)
    return out


def _pair_acts(lm, probe: PairProbe, records, scenarios: dict | None,
               layers: Sequence[int] | None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Both sides of ``records``, pooled as ``probe`` was, at each of its layers: ``{layer: (X_pos, X_neg)}``."""
    records = list(records)
    if len(records) < 2:
        raise DataError(f"need at least 2 pairs to score a probe, got {len(records)}")
    layers = list(probe.layers) if layers is None else [int(l) for l in layers]
    bad = [l for l in layers if l not in probe.directions]
    if bad:
        raise ValueError(f"layers {bad}: the probe has directions for layers {sorted(probe.directions)}")
    sites = [f"{probe.site_kind}.{l}" for l in layers]
    acts = _capture_pairs(lm, records, scenarios, sites, probe.pooling)
    n = len(records)
    out = {}
    for l, s in zip(layers, sites):
        X = acts[s].double().numpy()
        out[l] = (X[:n], X[n:])
    return out


def evaluate_pairs(lm, probe: PairProbe, records, scenarios: dict | None = None,
                   layers: Sequence[int] | None = None, seed: int = 0) -> dict[int, Detection]:
    """Score a fitted probe on other pairs (ablated or adversarial ones): ``{layer: Detection}``.

    Every record is a test pair here; each layer's direction keeps the
    threshold it was fitted with, and the texts are pooled as the probe was.
    """
    return {l: evaluate_direction(probe.directions[l], Xp, Xn, threshold=probe.thresholds[l], seed=seed)
            for l, (Xp, Xn) in _pair_acts(lm, probe, records, scenarios, layers).items()}


def transfer_pairs(lm, probe: PairProbe, records, scenarios: dict | None = None,
                   layers: Sequence[int] | None = None, n_random: int = 100, seed: int = 0) -> dict[int, dict]:
    """A fitted probe on new pairs, per layer, next to random directions scored the same way.

    For every layer: ``detection`` (:class:`Detection` with the probe's
    fitted threshold), ``paired`` (share of pairs whose positive side
    projects higher than its own negative side) with a Wilson 95% interval
    ``paired_ci``, and ``random`` (:func:`random_baseline`: ``n_random``
    unit directions oriented on the pairs the probe was trained on, then
    scored on ``records``). Orienting needs only the sign of each random
    direction's dot product with the training sides' mean difference, and
    the probe's direction is that difference normalised (:func:`emocircuits.readout.mean_diff`),
    so the training texts need no second forward pass.
    """
    from scipy.stats import binomtest

    out = {}
    for l, (Pte, Nte) in _pair_acts(lm, probe, records, scenarios, layers).items():
        d = probe.directions[l]
        wins = int(((Pte @ d) > (Nte @ d)).sum())
        ci = binomtest(wins, len(Pte)).proportion_ci(method="wilson")
        # a one-row "training set" whose sides' means differ by d orients the draws as the training pairs do
        rb = random_baseline(d[None], np.zeros((1, d.size)), Pte, Nte, n=n_random, seed=seed)
        out[l] = {"detection": evaluate_direction(d, Pte, Nte, threshold=probe.thresholds[l], seed=seed),
                  "paired": wins / len(Pte), "paired_ci": (float(ci.low), float(ci.high)), "random": rb}
    return out


def _fold_aurocs(Xp: np.ndarray, Xn: np.ndarray, folds) -> float:
    """Mean AUROC over folds: a mean-difference direction fitted on each fold's training rows scores its test rows."""
    aucs = []
    for tr, te in folds:
        d = mean_diff(Xp[tr], Xn[tr])
        aucs.append(auroc(Xp[te] @ d, Xn[te] @ d))
    return float(np.mean(aucs))


def _train_cv_aurocs(X_by_layer: dict, n: int, train: np.ndarray, scenarios: list, seed: int
                     ) -> tuple[dict[int, float], str]:
    """Cross-validated AUROC per layer on the train pairs only (rows ``:n`` positive, ``n:`` negative).

    Leave one scenario out when the train pairs come from at least 2 scenarios, else 5 folds of pairs
    (shuffled with ``seed``). Returns the AUROCs and the rule, in words.
    """
    idx = np.flatnonzero(train)
    groups = np.array([str(scenarios[i]) for i in idx])
    if None not in [scenarios[i] for i in idx] and len(set(groups)) >= 2:
        folds, rule = list(LeaveOneGroupOut().split(idx, groups=groups)), "leave-one-scenario-out AUROC, train pairs"
    else:
        k = min(5, len(idx))
        folds = list(KFold(k, shuffle=True, random_state=seed).split(idx))
        rule = f"{k}-fold AUROC over train pairs"
    return {l: _fold_aurocs(X[:n][idx], X[n:][idx], folds) for l, X in X_by_layer.items()}, rule


def cv_layer_auroc(lm, records, scenarios: dict | None = None, layers: Sequence[int] | None = None,
                   pooling: str = "mean_all", site_kind: str = "resid_post") -> dict[int, float]:
    """Choose a layer without the test pairs: leave-one-scenario-out AUROC per layer on the train split.

    For each scenario of the train split, a mean-difference direction is
    fitted on the other scenarios' train pairs and scores the held-out
    scenario's pairs; a layer's value is the mean of those folds' AUROCs.
    Test pairs are never read. Returns ``{layer: auroc}``; :func:`best_layer`
    picks from it.
    """
    train = [r for r in records if getattr(r, "split", None) == "train"]
    groups = np.array([r.scenario for r in train])
    if len(set(groups)) < 2:
        raise DataError(f"need train pairs from at least 2 scenarios to cross-validate a layer, got "
                        f"{len(train)} train pairs from {len(set(groups))}")
    layers = model_layers(lm, layers)
    sites = [f"{site_kind}.{l}" for l in layers]
    acts = _capture_pairs(lm, train, scenarios, sites, pooling)
    n = len(train)
    cv, _ = _train_cv_aurocs({l: acts[site].double().numpy() for l, site in zip(layers, sites)}, n,
                             np.ones(n, dtype=bool), list(groups), seed=0)  # >= 2 scenarios: leave one out
    return cv


def save_probe(probe: PairProbe, out_dir: str | Path) -> Path:
    """``DIR/metrics.json`` and ``DIR/directions.safetensors`` (one ``layer.L`` tensor each), atomically."""
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"layer.{l}": torch.tensor(probe.directions[l], dtype=torch.float32) for l in probe.layers}
    meta = {"model": probe.model, "pooling": probe.pooling, "site": probe.site_kind,
            "thresholds": json.dumps({str(l): probe.thresholds[l] for l in probe.layers})}
    atomic_write(out / "directions.safetensors", lambda p: save_file(tensors, str(p), metadata=meta))
    atomic_write_text(out / "metrics.json", json.dumps(probe.metrics, indent=2) + "\n")
    return out


def load_probe(probe_dir: str | Path) -> PairProbe:
    from safetensors import safe_open

    d = Path(probe_dir)
    files = [d / "metrics.json", d / "directions.safetensors"]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"{d}: not a probe folder (missing {', '.join(missing)}); "
                                f"make one with `emocircuits probe`")
    metrics = json.loads(files[0].read_text())
    with safe_open(str(files[1]), framework="np") as f:
        meta = f.metadata()
        dirs = {int(k.split(".")[1]): f.get_tensor(k).astype(np.float64) for k in f.keys()}
    thr = {int(k): v for k, v in json.loads(meta["thresholds"]).items()}
    return PairProbe(meta["model"], meta["pooling"], meta["site"], sorted(dirs), dirs, thr, metrics)


def score_texts(lm, probe: PairProbe, texts: Sequence[str], layer: int | None = None,
                response_starts: Sequence[int] | None = None, progress: bool = False) -> np.ndarray:
    """Projection of each text's pooled activation on the probe's direction (best layer by default)."""
    if probe.model != lm.name:
        raise ValueError(f"the probe was fitted on {probe.model!r}, not {lm.name!r}; directions do not transfer "
                         f"between models without an alignment")
    layer = probe.best_layer if layer is None else int(layer)
    if layer not in probe.directions:
        raise ValueError(f"layer {layer}: the probe has layers {probe.layers}")
    pooling = probe.pooling
    if pooling == "mean_response" and response_starts is None:
        pooling = "mean_all"
    site = f"{probe.site_kind}.{layer}"
    X = capture(lm, list(texts), [site], pooling=pooling, response_starts=response_starts, progress=progress)[site]
    return X.double().numpy() @ probe.directions[layer]
