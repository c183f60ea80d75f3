"""Directions and probes in activation space (chapter 00 introduces one; chapter 03 the full set).

* :func:`mean_diff`: paper A's normalised mean difference between the two
  sides of contrastive pairs.
* :func:`centred_centroids`: paper B's context-agnostic emotion directions:
  within each scenario-valence group subtract the mean over emotions,
  average per emotion, centre across emotions, normalise.
* :func:`logistic_direction`: a scikit-learn logistic-regression probe.
* :func:`evaluate_direction`: AUROC, accuracy at the midpoint threshold and
  Cohen's d on held-out pairs, each with a bootstrap interval over pairs.
* :func:`random_baseline` and :func:`shuffled_baseline`: what a direction
  with no knowledge of the labels scores on the same test set;
  :func:`pc_baseline`: what the texts' main axes of variation score.
* :func:`align_procrustes`: maps one model's activations into another's
  (PCA + orthogonal Procrustes), for cross-model agreement.
* :func:`persona_replies` and :func:`persona_directions`: Persona Vectors'
  direction, from the model's own replies under a trait-eliciting and a
  trait-suppressing system prompt (chapter 06).
* :func:`fit_pair_probe` / :func:`save_probe` / :func:`load_probe`: what the
  ``emocircuits probe`` and ``score`` commands run; :func:`evaluate_pairs`
  and :func:`transfer_pairs` score a fitted probe on other pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, LeaveOneGroupOut, cross_val_predict, permutation_test_score
from sklearn.neighbors import NearestCentroid

from .activations import capture
from .cache import atomic_write, atomic_write_text
from .datasets import DataError, eia_prompt
from .stats import bootstrap_ci
from .generation import generate


# ---------------------------------------------------------------------------
# chapter 00's first tool


@dataclass
class Separability:
    """Held-out accuracy of a nearest-class-mean classifier, with its baselines."""

    accuracy: float
    ci_low: float
    ci_high: float
    shuffled_mean: float
    shuffled_p95: float
    p_value: float


def centroid_separability(X, y, groups, n_perm: int = 100, seed: int = 0) -> Separability:
    """How well class means separate held-out items.

    A nearest-centroid classifier is fitted leaving one group out at a time
    (a group is, e.g., a pair of sentences that share a template), so no
    item is classified by a mean it helped compute. The interval is a
    bootstrap over items of the per-item correctness; the baseline is the
    same procedure with labels shuffled within groups (``n_perm`` times).
    """
    X, y, groups = np.asarray(X, float), np.asarray(y), np.asarray(groups)
    if not (len(X) == len(y) == len(groups)):
        raise ValueError(f"X, y and groups must have the same length, got {len(X)}, {len(y)}, {len(groups)}")
    if len(np.unique(y)) < 2:
        raise ValueError("y must contain at least two classes")
    cv = LeaveOneGroupOut()
    pred = cross_val_predict(NearestCentroid(), X, y, groups=groups, cv=cv)
    acc, lo, hi = bootstrap_ci((pred == y).astype(float), n_boot=1000, seed=seed)
    _, null, p = permutation_test_score(NearestCentroid(), X, y, groups=groups, cv=cv,
                                        n_permutations=n_perm, random_state=seed)
    return Separability(acc, lo, hi, float(null.mean()), float(np.quantile(null, 0.95)), float(p))


# ---------------------------------------------------------------------------
# directions


def _as2d(X, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array [items, width], got shape {X.shape}")
    return X


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    if np.any(n == 0):
        raise ValueError("a direction is zero: the two sides have identical means")
    return v / n


def mean_diff(X_pos, X_neg) -> np.ndarray:
    """Paper A's probe: ``mean(X_pos) - mean(X_neg)``, normalised to unit length."""
    X_pos, X_neg = _as2d(X_pos, "X_pos"), _as2d(X_neg, "X_neg")
    if X_pos.shape[1] != X_neg.shape[1]:
        raise ValueError(f"X_pos and X_neg widths differ: {X_pos.shape[1]} vs {X_neg.shape[1]}")
    return _unit(X_pos.mean(0) - X_neg.mean(0))


def centred_centroids(X, labels: Sequence[str], groups: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Paper B's context-agnostic directions, one unit row per class in ``classes``.

    ``groups`` names the context of each row (scenario and event valence);
    every group must hold every class once or more. Subtracting each
    group's mean over classes removes what the context adds to all classes
    alike; the class centroids are then centred across classes.
    """
    X = _as2d(X, "X")
    labels, groups = np.asarray(labels), np.asarray(groups)
    if not (len(X) == len(labels) == len(groups)):
        raise ValueError(f"X, labels and groups must have the same length, got {len(X)}, {len(labels)}, {len(groups)}")
    unknown = sorted(set(labels.tolist()) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not in classes {list(classes)}")
    Xc = X.copy()
    for g in np.unique(groups):
        m = groups == g
        missing = sorted(set(classes) - set(labels[m].tolist()))
        if missing:
            raise ValueError(f"group {str(g)!r} lacks classes {missing}; each group needs every class")
        group_mean = np.mean([X[m & (labels == c)].mean(0) for c in classes], axis=0)
        Xc[m] -= group_mean
    cents = np.stack([Xc[labels == c].mean(0) for c in classes])
    return _unit(cents - cents.mean(0))


def centre_by_group(X, groups: Sequence[str]) -> np.ndarray:
    """Subtract each group's mean (e.g. scenario and valence), leaving what varies within groups."""
    X = _as2d(X, "X").copy()
    groups = np.asarray(groups)
    if len(groups) != len(X):
        raise ValueError(f"X has {len(X)} rows but groups has {len(groups)}")
    for g in np.unique(groups):
        m = groups == g
        X[m] -= X[m].mean(0)
    return X


def logistic_direction(X_pos, X_neg, C: float = 1.0, seed: int = 0) -> np.ndarray:
    """A logistic-regression probe's weight vector (on standardised features, mapped back), unit length."""
    X_pos, X_neg = _as2d(X_pos, "X_pos"), _as2d(X_neg, "X_neg")
    X = np.vstack([X_pos, X_neg])
    y = np.r_[np.ones(len(X_pos)), np.zeros(len(X_neg))]
    sd = X.std(0) + 1e-8
    clf = LogisticRegression(C=C, max_iter=5000, random_state=seed).fit((X - X.mean(0)) / sd, y)
    return _unit(clf.coef_[0] / sd)


# ---------------------------------------------------------------------------
# metrics


@dataclass
class Detection:
    """Held-out detection by a direction: values with 95% bootstrap intervals over pairs."""

    auroc: float
    auroc_ci: tuple[float, float]
    accuracy: float
    accuracy_ci: tuple[float, float]
    cohens_d: float
    cohens_d_ci: tuple[float, float]

    def as_dict(self) -> dict:
        return {"auroc": self.auroc, "auroc_ci": list(self.auroc_ci), "accuracy": self.accuracy,
                "accuracy_ci": list(self.accuracy_ci), "cohens_d": self.cohens_d,
                "cohens_d_ci": list(self.cohens_d_ci)}


def cohens_d(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else float("inf") * np.sign(a.mean() - b.mean())


def _auroc(s_pos, s_neg) -> float:
    return float(roc_auc_score(np.r_[np.ones(len(s_pos)), np.zeros(len(s_neg))], np.r_[s_pos, s_neg]))


def _auroc_rows(P: np.ndarray, N: np.ndarray) -> np.ndarray:
    """AUROC of each row of P against the same row of N (the Mann-Whitney count), for the bootstrap."""
    gt = (P[:, :, None] > N[:, None, :]).mean((1, 2))
    eq = (P[:, :, None] == N[:, None, :]).mean((1, 2))
    return gt + 0.5 * eq


def _d_rows(P: np.ndarray, N: np.ndarray) -> np.ndarray:
    pooled = np.sqrt((P.var(1, ddof=1) + N.var(1, ddof=1)) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (P.mean(1) - N.mean(1)) / pooled


def _ci(vals: np.ndarray) -> tuple[float, float]:
    vals = vals[np.isfinite(vals)]
    return float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))


def auroc_ci(s_pos, s_neg, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """``(AUROC, low, high)`` of scores of two *unpaired* groups; the bootstrap resamples each group on its own."""
    P, N = np.asarray(s_pos, float).ravel(), np.asarray(s_neg, float).ravel()
    if len(P) < 2 or len(N) < 2:
        raise ValueError(f"need at least 2 scores in each group, got {len(P)} positive and {len(N)} negative")
    rng = np.random.default_rng(seed)
    Pb, Nb = P[rng.integers(0, len(P), (n_boot, len(P)))], N[rng.integers(0, len(N), (n_boot, len(N)))]
    return (_auroc(P, N), *_ci(_auroc_rows(Pb, Nb)))


def evaluate_direction(direction, X_pos_test, X_neg_test, threshold: float | None = None,
                       n_boot: int = 1000, seed: int = 0) -> Detection:
    """AUROC, midpoint accuracy and Cohen's d of projections on held-out pairs.

    Rows of ``X_pos_test`` and ``X_neg_test`` are the two sides of the same
    pairs; the bootstrap resamples pairs (``n_boot`` times, seeded).
    ``threshold`` is the midpoint of the *training* class means on the
    direction (pass it from the training data); without it the test
    midpoint is used. Accuracy counts both sides.
    """
    d = np.asarray(direction, float)
    P, N = _as2d(X_pos_test, "X_pos_test") @ d, _as2d(X_neg_test, "X_neg_test") @ d
    if len(P) != len(N):
        raise ValueError(f"test sides must be paired: {len(P)} positive vs {len(N)} negative rows")
    if len(P) < 2:
        raise ValueError("need at least 2 test pairs")
    thr = (P.mean() + N.mean()) / 2 if threshold is None else float(threshold)
    idx = np.random.default_rng(seed).integers(0, len(P), (n_boot, len(P)))
    Pb, Nb = P[idx], N[idx]
    acc_b = ((Pb > thr).sum(1) + (Nb <= thr).sum(1)) / (2 * len(P))
    return Detection(
        _auroc(P, N), _ci(_auroc_rows(Pb, Nb)),
        float(((P > thr).sum() + (N <= thr).sum()) / (2 * len(P))), _ci(acc_b),
        cohens_d(P, N), _ci(_d_rows(Pb, Nb)),
    )


def midpoint(direction, X_pos, X_neg) -> float:
    d = np.asarray(direction, float)
    return float(((np.asarray(X_pos) @ d).mean() + (np.asarray(X_neg) @ d).mean()) / 2)


def _orient(D: np.ndarray, P: np.ndarray, N: np.ndarray) -> np.ndarray:
    """Rows of ``D`` signed so that the positive side projects higher on average (a tie keeps the sign)."""
    sign = np.sign((P @ D.T).mean(0) - (N @ D.T).mean(0))
    sign[sign == 0] = 1
    return D * sign[:, None]


def random_baseline(X_pos_train, X_neg_train, X_pos_test, X_neg_test, n: int = 100, seed: int = 0,
                    oriented: bool = True) -> dict:
    """Test AUROC of ``n`` random unit directions, each signed so that the training sides separate.

    A random direction has no preferred sign, so each is oriented on the
    training data (as any probe is) before it is scored on the test data.
    Also returns each direction's Cohen's d on the test data (``d_mean``,
    ``d_p95``, ``ds``): AUROC cannot exceed 1, so when both the probe and
    the random directions separate the test pairs almost perfectly, d still
    shows how much farther apart the probe puts them. When the test sides
    have the same number of rows (pairs), also the share of pairs each
    direction puts the right way round (``paired_mean``, ``paired_p95``,
    ``paired``).
    ``oriented=False`` scores the directions as drawn (paper A's baseline):
    their AUROCs spread around 0.5 whatever the data, a weaker comparison.
    """
    if not isinstance(oriented, bool):
        raise TypeError(f"oriented={oriented!r}: expected True or False")
    rng = np.random.default_rng(seed)
    Ptr, Ntr = _as2d(X_pos_train, "X_pos_train"), _as2d(X_neg_train, "X_neg_train")
    Pte, Nte = _as2d(X_pos_test, "X_pos_test"), _as2d(X_neg_test, "X_neg_test")
    D = _unit(rng.standard_normal((n, Ptr.shape[1])))
    if oriented:
        D = _orient(D, Ptr, Ntr)
    sp, sn = (Pte @ D.T).T, (Nte @ D.T).T
    aucs = _auroc_rows(sp, sn)
    ds = _d_rows(sp, sn)
    out = {"mean": float(aucs.mean()), "p95": float(np.quantile(aucs, 0.95)), "aurocs": aucs.tolist(),
           "d_mean": float(np.nanmean(ds)), "d_p95": float(np.nanquantile(ds, 0.95)), "ds": ds.tolist()}
    if sp.shape == sn.shape:  # paired test sides: the share of pairs each direction ranks the right way round
        wins = (sp > sn).mean(1)
        out.update(paired_mean=float(wins.mean()), paired_p95=float(np.quantile(wins, 0.95)),
                   paired=wins.tolist())
    return out


def pc_baseline(X_pos_train, X_neg_train, X_pos_test, X_neg_test, k: int = 3) -> dict:
    """Test AUROC of the training texts' top ``k`` principal components, each oriented on the training sides.

    The components are fitted on both sides' training vectors without their
    labels (scikit-learn's PCA), so they are the texts' main axes of
    variation. When the first of them already separates the test pairs, the
    contrast is the largest thing that varies across these texts, and any
    direction with a share of that axis separates them too: the reason a
    random-direction baseline can sit high. Returns ``auroc`` and
    ``explained_variance`` (share of the training variance), one per
    component.
    """
    from sklearn.decomposition import PCA

    Ptr, Ntr = _as2d(X_pos_train, "X_pos_train"), _as2d(X_neg_train, "X_neg_train")
    Pte, Nte = _as2d(X_pos_test, "X_pos_test"), _as2d(X_neg_test, "X_neg_test")
    if not isinstance(k, int) or not 1 <= k <= len(Ptr) + len(Ntr):
        raise ValueError(f"k={k!r}: expected an int from 1 to the number of training vectors ({len(Ptr) + len(Ntr)})")
    pca = PCA(n_components=k, svd_solver="full").fit(np.vstack([Ptr, Ntr]))
    D = _orient(pca.components_, Ptr, Ntr)
    aucs = _auroc_rows((Pte @ D.T).T, (Nte @ D.T).T)
    return {"auroc": aucs.tolist(), "explained_variance": pca.explained_variance_ratio_.tolist()}


def shuffled_baseline(X_pos_train, X_neg_train, X_pos_test, X_neg_test, n: int = 100, seed: int = 0) -> dict:
    """Test AUROC of mean-difference probes trained with the two sides swapped at random within pairs."""
    rng = np.random.default_rng(seed)
    Ptr, Ntr = _as2d(X_pos_train, "X_pos_train"), _as2d(X_neg_train, "X_neg_train")
    Pte, Nte = _as2d(X_pos_test, "X_pos_test"), _as2d(X_neg_test, "X_neg_test")
    aucs = []
    for _ in range(n):
        swap = rng.random(len(Ptr)) < 0.5
        A = np.where(swap[:, None], Ntr, Ptr)
        B = np.where(swap[:, None], Ptr, Ntr)
        if np.allclose(A.mean(0), B.mean(0)):
            continue
        d = mean_diff(A, B)
        aucs.append(_auroc(Pte @ d, Nte @ d))
    aucs = np.array(aucs)
    return {"mean": float(aucs.mean()), "p95": float(np.quantile(aucs, 0.95)), "aurocs": aucs.tolist()}


# ---------------------------------------------------------------------------
# cross-model alignment


@dataclass
class Alignment:
    """An affine map from model B's activation space into model A's (PCA + orthogonal Procrustes)."""

    mean_a: np.ndarray
    mean_b: np.ndarray
    basis_a: np.ndarray  # [k, d_a]
    basis_b: np.ndarray  # [k, d_b]
    rotation: np.ndarray  # [k, k]
    scale: float

    def __call__(self, X_b) -> np.ndarray:
        Z = (np.asarray(X_b, float) - self.mean_b) @ self.basis_b.T
        return (Z @ self.rotation) * self.scale @ self.basis_a + self.mean_a


def align_procrustes(X_a, X_b, k: int = 64) -> Alignment:
    """Fit a map B -> A on paired rows (the same texts through both models).

    Both spaces are reduced to their top ``k`` principal components; an
    orthogonal rotation and a global scale map B's coordinates onto A's.
    Fit it on texts disjoint from those you evaluate on.
    """
    from scipy.linalg import orthogonal_procrustes

    X_a, X_b = _as2d(X_a, "X_a"), _as2d(X_b, "X_b")
    if len(X_a) != len(X_b):
        raise ValueError(f"X_a and X_b must hold the same texts: {len(X_a)} vs {len(X_b)} rows")
    k = int(min(k, len(X_a) - 1, X_a.shape[1], X_b.shape[1]))
    if k < 1:
        raise ValueError("need at least two paired rows to align")
    ma, mb = X_a.mean(0), X_b.mean(0)
    ua = np.linalg.svd(X_a - ma, full_matrices=False)[2][:k]
    ub = np.linalg.svd(X_b - mb, full_matrices=False)[2][:k]
    Za, Zb = (X_a - ma) @ ua.T, (X_b - mb) @ ub.T
    R, s = orthogonal_procrustes(Zb, Za)
    scale = float(s / (Zb ** 2).sum())
    return Alignment(ma, mb, ua, ub, R, scale)


# ---------------------------------------------------------------------------
# pairs -> texts -> a probe on disk (what the CLI runs)


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


def _layers(lm, layers: Sequence[int] | None) -> list[int]:
    """``layers`` as ints (all of ``lm``'s when None), refused by name when empty or out of range."""
    layers = list(range(lm.n_layers)) if layers is None else [int(l) for l in layers]
    bad = [l for l in layers if not 0 <= l < lm.n_layers]
    if bad or not layers:
        what = f"layers {bad} out of range" if bad else "layers is empty"
        raise ValueError(f"{what}: {lm.name} has layers 0..{lm.n_layers - 1}")
    return layers


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
    layers = _layers(lm, layers)
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
    the probe's direction is that difference normalised (:func:`mean_diff`),
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
        aucs.append(_auroc(Xp[te] @ d, Xn[te] @ d))
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
    layers = _layers(lm, layers)
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


# ---------------------------------------------------------------------------
# persona vectors: a direction from the model's own replies


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
    layers = _layers(lm, layers)
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
    """Persona Vectors' trait direction per layer: :func:`mean_diff` of the model's own replies under the two prompts.

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
