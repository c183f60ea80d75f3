"""Directions and probes (a first tool in chapter 00; the full set in chapter 03)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
