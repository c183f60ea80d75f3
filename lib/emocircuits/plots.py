"""The book's figure style and shared plots (chapter 00 onwards)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.figure import Figure

PALETTE = "colorblind"


def setup_style() -> None:
    """One look for every figure in the book, and every figure shown in a notebook described in words (its
    plain-text form, :func:`describe`), which the rendered book turns into the image's alt text and caption."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "figure.figsize": (7, 3.6),
                         "axes.titleweight": "bold", "axes.spines.top": False, "axes.spines.right": False})
    try:
        from IPython import get_ipython  # optional: only a notebook kernel shows figures this way
    except ImportError:  # pragma: no cover
        return
    shell = get_ipython()
    if shell is None:
        return
    # Loading the inline backend (on a kernel's first figure) drops every formatter registered for Figure, so the
    # backend is loaded first, and the description is registered again before each cell in case it is reloaded.
    plt.close(plt.figure())
    _describe_figures_in(shell)
    if _before_each_cell not in shell.events.callbacks["pre_run_cell"]:
        shell.events.register("pre_run_cell", _before_each_cell)


def _describe_figures_in(shell) -> None:
    shell.display_formatter.formatters["text/plain"].for_type(Figure, _pretty_description)


def _before_each_cell(*_) -> None:
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        _describe_figures_in(shell)


def _pretty_description(fig, printer, cycle) -> None:
    printer.text(describe(fig))


def _words(text: str) -> str:
    return " ".join(text.replace("$", "").split())


def describe(fig: Figure) -> str:
    """A figure in words: its title on the first line (the rendered book's caption), then each panel's title,
    axes and legend (with the title, the image's alt text)."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    panels = [ax for ax in fig.axes if ax.get_visible() and (ax.has_data() or ax.get_title())]
    sup = _words(fig.get_suptitle()) if hasattr(fig, "get_suptitle") else ""
    titles = [_words(ax.get_title()) for ax in panels if ax.get_title().strip()]
    title = sup or "; ".join(titles) or "Figure"
    parts = []
    for i, ax in enumerate(panels):
        bits = []
        if len(panels) > 1 and ax.get_title().strip():
            bits.append(_words(ax.get_title()))
        x, y = _words(ax.get_xlabel()), _words(ax.get_ylabel())
        ticks = [_words(t.get_text()) for t in ax.get_xticklabels() if t.get_text().strip()]
        if x:
            bits.append(f"{y or 'values'} against {x}")
        elif ticks and not all(t.lstrip("−-").replace(".", "", 1).isdigit() for t in ticks):
            bits.append(f"{y or 'values'} for {', '.join(ticks[:8])}{', ...' if len(ticks) > 8 else ''}")
        elif y:
            bits.append(y)
        legend = ax.get_legend()
        if legend is not None:
            labels = [_words(t.get_text()) for t in legend.get_texts() if t.get_text().strip()]
            if labels:
                bits.append("legend: " + ", ".join(labels))
        if bits:
            parts.append((f"Panel {i + 1}: " if len(panels) > 1 else "") + "; ".join(bits) + ".")
    shared = [_words(t.get_text()) for legend in getattr(fig, "legends", []) for t in legend.get_texts()]
    if shared:
        parts.append("Legend: " + ", ".join(t for t in shared if t) + ".")
    return f"{title}\n{' '.join(parts)}".strip()


def band(ax, x, mean, lo, hi, label: str, **kw):
    """A line with a shaded interval."""
    line, = ax.plot(x, mean, label=label, **kw)
    ax.fill_between(x, lo, hi, alpha=0.2, color=line.get_color(), linewidth=0)
    return line
