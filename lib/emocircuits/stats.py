"""Small statistics shared by every chapter (introduced in chapter 00)."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values, stat=np.mean, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(stat(values), low, high)``: the percentile bootstrap interval, resampling items."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"values must be 1-D with at least 2 items, got shape {x.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level={level}: expected a number between 0 and 1")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = np.array([stat(x[i]) for i in idx])
    a = (1 - level) / 2
    return float(stat(x)), float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def correlation_ci(x, y, method: str = "spearman", n_boot: int = 500, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """``(r, low, high)``: Spearman's or Pearson's correlation of paired ``x`` and ``y``, with the percentile
    bootstrap interval over pairs (:func:`bootstrap_ci` resampling pair indices)."""
    from scipy.stats import pearsonr, spearmanr

    corr = {"spearman": spearmanr, "pearson": pearsonr}.get(method)
    if corr is None:
        raise ValueError(f"method={method!r}: expected 'spearman' or 'pearson'")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D and paired, got shapes {x.shape} and {y.shape}")
    return bootstrap_ci(np.arange(len(x)), stat=lambda i: corr(x[i.astype(int)], y[i.astype(int)])[0],
                        n_boot=n_boot, level=level, seed=seed)
