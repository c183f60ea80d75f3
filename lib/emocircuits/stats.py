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
