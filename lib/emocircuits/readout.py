"""Directions read from activations, and how well they separate (chapter 00 introduces one; chapter 03 the
full set).

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
* :func:`centroid_separability`: chapter 00's first tool, whether labelled
  activations sit nearer their own centroid than chance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict, permutation_test_score
from sklearn.neighbors import NearestCentroid

from .stats import bootstrap_ci


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


def auroc(s_pos, s_neg) -> float:
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
    return (auroc(P, N), *_ci(_auroc_rows(Pb, Nb)))


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
        auroc(P, N), _ci(_auroc_rows(Pb, Nb)),
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
        aucs.append(auroc(Pte @ d, Nte @ d))
    aucs = np.array(aucs)
    return {"mean": float(aucs.mean()), "p95": float(np.quantile(aucs, 0.95)), "aurocs": aucs.tolist()}


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
