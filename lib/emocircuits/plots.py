"""The book's figure style and shared plots (chapter 00 onwards)."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure

from .activations import capture
from .attribution import Graph

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


def neuron_token_values(lm, texts: Sequence[str], neurons: Sequence[tuple[int, int]],
                        clip_quantile: float = 0.01) -> tuple[list[str], torch.Tensor]:
    """Each token of ``texts`` (one after another, a blank line between texts) with the activation of each MLP
    neuron ``(layer, index)`` on it: ``(tokens, values [tokens, neurons])``, the input of a circuitsvis token view.

    Special tokens (BOS, chat-template markers) carry activations far outside the range of words (hundreds
    against a few), which would set a colour scale where every word is pale; they are shown at 0, and every
    other value is clipped to the ``clip_quantile`` .. ``1 - clip_quantile`` quantiles of the ordinary tokens'
    values, per neuron.
    """
    if not texts or isinstance(texts, str):
        raise ValueError("texts must be a non-empty list of str")
    if not neurons or not all(isinstance(n, (tuple, list)) and len(n) == 2 for n in neurons):
        raise ValueError(f"neurons must be a non-empty list of (layer, index) pairs, got {neurons!r}")
    if not 0 <= clip_quantile < 0.5:
        raise ValueError(f"clip_quantile={clip_quantile!r}: expected a number in [0, 0.5)")
    layers = sorted({layer for layer, _ in neurons})
    rows = capture(lm, list(texts), [f"mlp_act.{layer}" for layer in layers], pooling="none", progress=False)
    ids = lm.encode(list(texts), padding_side="right")["input_ids"]
    special = set(lm.tokenizer.all_special_ids)
    tokens, values, ordinary = [], [], []
    for r in range(len(texts)):
        n = rows[f"mlp_act.{layers[0]}"][r].shape[0]
        row_ids = [int(t) for t in ids[r][:n]]
        tokens += [lm.tokenizer.decode([t]) for t in row_ids] + ["\n\n"]
        vals = torch.stack([rows[f"mlp_act.{layer}"][r][:, index].float() for layer, index in neurons], 1)
        values.append(torch.cat([vals, torch.zeros(1, len(neurons))]))
        ordinary += [t not in special for t in row_ids] + [False]
    values, ordinary = torch.cat(values), torch.tensor(ordinary)
    values[~ordinary] = 0.0
    if ordinary.any() and clip_quantile > 0:
        lo = torch.quantile(values[ordinary], clip_quantile, dim=0)
        hi = torch.quantile(values[ordinary], 1 - clip_quantile, dim=0)
        values = torch.maximum(torch.minimum(values, hi), lo) * ordinary[:, None]
    return tokens, values


def neuron_view(lm, texts: Sequence[str], neurons: Sequence[tuple[int, int]], labels: Sequence[str] | None = None,
                clip_quantile: float = 0.01):
    """A circuitsvis view of MLP neurons' activations token by token (:func:`neuron_token_values`), with its
    JavaScript inline so the page works offline; display it with ``IPython.display.display``."""
    import circuitsvis as cv  # optional at import time: only the views need it
    from IPython.display import HTML

    tokens, values = neuron_token_values(lm, texts, neurons, clip_quantile)
    labels = list(labels) if labels is not None else [f"L{layer} N{index}" for layer, index in neurons]
    return HTML(cv.tokens.colored_tokens_multi(tokens, values, labels=labels).local_src)


def plot_graph(graph: Graph, kept: dict, ax=None, max_edges: int = 300,
               labels: Mapping[tuple[int, int], str] | None = None, n_labels: int = 8):
    """Draw the pruned graph, readable at a glance.

    Only the token positions that hold a kept node are drawn, one column each, with their tokens as labels;
    layers go up. Feature nodes are violet, sized by influence on the logit, and the ``n_labels`` most
    influential are numbered and named, beside the picture, by ``labels`` (``{(layer, feature): text}``, e.g.
    :func:`emocircuits.features.feature_labels`). Error
    nodes, what the transcoders miss, are summed per layer into one grey diamond in the right-hand column,
    sized by their share of influence; the edges into and out of them are not drawn. Edge width follows
    |direct effect|, orange positive and blue negative; a legend says so.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ax = ax or plt.subplots(figsize=(12, 7))[1]
    nf, L, T = len(graph.features), graph.n_layers, graph.n_tok
    nodes = [int(i) for i in np.nonzero(kept["nodes"])[0]]
    is_error = [nf <= i < nf + L * T for i in nodes]
    drawn = [i for i, e in zip(nodes, is_error) if not e]
    columns = sorted({graph.node_xy(i)[0] for i in drawn})
    col = {p: c for c, p in enumerate(columns)}
    slot: dict = {}
    xy = {}
    for i in drawn:  # spread the nodes that share a (position, layer) cell
        x, y = graph.node_xy(i)
        n = slot.get((x, y), 0)
        slot[(x, y)] = n + 1
        xy[i] = (col[x] + 0.14 * n - 0.3 * (n > 0), y + 0.1 * (n % 3))
    t, s = np.nonzero(kept["edges"])
    w = graph.adjacency[t, s]
    order = [j for j in np.argsort(-np.abs(w)) if int(s[j]) in xy and int(t[j]) in xy][:max_edges]
    wmax = float(np.abs(w[order]).max()) if order else 1.0
    for j in order[::-1]:
        (xa, ya), (xb, yb) = xy[int(s[j])], xy[int(t[j])]
        ax.plot([xa, xb], [ya, yb], color="#d95f02" if w[j] > 0 else "#1f78b4",
                lw=0.3 + 3 * abs(w[j]) / wmax, alpha=0.25 + 0.6 * abs(w[j]) / wmax, zorder=1)
    infl = graph.influence
    imax = float(infl[:nf].max()) if nf and infl[:nf].max() > 0 else 1.0
    feats = [i for i in drawn if i < nf]
    for i in feats:
        ax.scatter(*xy[i], s=20 + 180 * infl[i] / imax, color="#7570b3", zorder=3)
    named = []
    for k, i in enumerate(sorted(feats, key=lambda i: -infl[i])[:n_labels if labels else 0], start=1):
        la, _, f, _ = graph.features[i]  # a number by the node, its name in the list beside the picture
        ax.annotate(str(k), xy[i], xytext=(-9 if k % 2 else 5, 2), textcoords="offset points", fontsize=8,
                    fontweight="bold", color="#3f3a7a", zorder=4)
        named.append(f"{k}  {labels.get((la, f), f'L{la} F{f}')}")
    if named:
        ax.text(1.03, 1.0, "most influential features\n(tokens they fire on most)\n\n" + "\n".join(named),
                transform=ax.transAxes, va="top", ha="left", fontsize=8, color="#3f3a7a")
    for i in drawn:
        if i == graph.logit_index:
            ax.scatter(*xy[i], s=180, marker="*", color="#e7298a", zorder=3)
            ax.annotate(f"logit {graph.target!r}", xy[i], xytext=(5, 5), textcoords="offset points", fontsize=9)
        elif i >= nf:
            ax.scatter(*xy[i], s=40, marker="s", color="#1b9e77", zorder=3)
    err = np.array([infl[nf + la * T: nf + (la + 1) * T].sum() for la in range(L)]) if len(infl) else np.zeros(L)
    total = float(infl.sum()) or 1.0
    x_err = len(columns) + 0.5
    for la in range(L):
        if err[la] > 0:
            ax.scatter(x_err, la, s=20 + 400 * err[la] / total, marker="D", color="#999999", zorder=3)
    ax.axvline(len(columns) - 0.25, color="#dddddd", lw=1, zorder=0)
    ax.set_xticks(list(range(len(columns))) + [x_err])
    ax.set_xticklabels([repr(graph.tokens[p])[1:-1][:14] for p in columns] + ["errors, summed"],
                       rotation=45, ha="right", fontsize=9)
    ax.set_xlim(-0.8, x_err + 0.8)
    ax.set_ylabel("layer (tokens at -1)")
    ax.set_ylim(-1.6, L + 0.8)
    share = float(err.sum()) / total
    ax.set_title(f"Attribution graph for {graph.target!r}: {len(feats)} features, {len(order)} edges drawn; "
                 f"error nodes carry {share:.0%} of the influence")
    handles = [Line2D([], [], color="#d95f02", lw=2, label="edge: raises its target"),
               Line2D([], [], color="#1f78b4", lw=2, label="edge: lowers its target"),
               Line2D([], [], ls="", marker="o", color="#7570b3", label="feature (size: influence)"),
               Line2D([], [], ls="", marker="D", color="#999999", label="error nodes of a layer, summed"),
               Line2D([], [], ls="", marker="s", color="#1b9e77", label="input token"),
               Line2D([], [], ls="", marker="*", color="#e7298a", ms=10, label="target logit")]
    ax.legend(handles=handles, loc="upper left", fontsize=8, framealpha=0.9)
    return ax
