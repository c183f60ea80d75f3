"""The book's figure style and shared plots (chapter 00 onwards)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

PALETTE = "colorblind"


def setup_style() -> None:
    """One look for every figure in the book."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "figure.figsize": (7, 3.6),
                         "axes.titleweight": "bold", "axes.spines.top": False, "axes.spines.right": False})


def band(ax, x, mean, lo, hi, label: str, **kw):
    """A line with a shaded interval."""
    line, = ax.plot(x, mean, label=label, **kw)
    ax.fill_between(x, lo, hi, alpha=0.2, color=line.get_color(), linewidth=0)
    return line
