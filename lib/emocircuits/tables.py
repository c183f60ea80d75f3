"""Tables as a reader sees them (chapters 02-07): human headers, no index, an estimate and its interval in one
cell as "0.79 [0.71, 0.86]", numbers to a fixed number of decimals.

Chapters compute with plain DataFrames (columns such as ``score``, ``score_lo``, ``score_hi``); :func:`show`
turns one into the table the page prints, and :func:`interval` is the same format for one number in prose.
"""

from __future__ import annotations

import hashlib
import math
from typing import Mapping, Sequence

import pandas as pd
from pandas.io.formats.style import Styler


def interval(est: float, lo: float | None = None, hi: float | None = None, digits: int = 2) -> str:
    """``"0.79 [0.71, 0.86]"``; the estimate alone when the interval is missing (None or NaN); ``"-"`` for a
    missing estimate."""
    def missing(x):
        return x is None or (isinstance(x, float) and math.isnan(x))

    if missing(est):
        return "-"
    text = f"{est:.{digits}f}"
    return text if missing(lo) or missing(hi) else f"{text} [{lo:.{digits}f}, {hi:.{digits}f}]"


def show(df: pd.DataFrame, columns: Mapping[str, str] | Sequence[str] | None = None,
         intervals: Sequence[str] = (), digits: int = 2, index: bool = False,
         caption: str | None = None) -> Styler:
    """A DataFrame as the page prints it.

    - ``intervals``: columns ``c`` with ``c_lo`` and ``c_hi`` beside them, printed as one cell
      ``"est [lo, hi]"`` (the ``_lo``/``_hi`` columns are dropped).
    - ``columns``: which columns to print, in order, as ``{column: header}`` (or a list of columns, headers
      unchanged); default, all of them.
    - ``digits``: decimals of every other float; ``index``: whether to print the index (a meaningful one,
      such as an emotion or a layer); ``caption``: a line above the table.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    out = df.copy()
    for c in intervals:
        missing = [k for k in (c, f"{c}_lo", f"{c}_hi") if k not in out.columns]
        if missing:
            raise KeyError(f"intervals: {c!r} needs columns {c!r}, {c + '_lo'!r} and {c + '_hi'!r}; "
                           f"missing {missing}; the table has {list(out.columns)}")
        out[c] = [interval(e, lo, hi, digits) for e, lo, hi in zip(out[c], out[f"{c}_lo"], out[f"{c}_hi"])]
        out = out.drop(columns=[f"{c}_lo", f"{c}_hi"])
    if columns is not None:
        names = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
        unknown = [c for c in names if c not in out.columns]
        if unknown:
            raise KeyError(f"columns: {unknown} are not in the table; it has {list(out.columns)}")
        out = out[list(names)].rename(columns=names)
    # ids from the content, not pandas' random ones: a re-run prints the same page
    style = out.style.format(precision=digits, na_rep="-").set_uuid(
        hashlib.sha1(out.to_csv().encode()).hexdigest()[:10])
    if not index:
        style = style.hide(axis="index")
    if caption:
        style = style.set_caption(caption)
    return style


def push_label(alpha: float, scale: str, rms: float | None = None, both: bool = False) -> str:
    """A steering push as the tables print it: ``"+0.5 x RMS"`` (``scale`` "rms"), or on paper A's grid of a
    unit vector ``"+5 x unit vector (+0.75 x RMS)"`` given the layer's residual ``rms``; ``both``: a setting
    pushed both ways, ``"±0.5 x RMS"``; alpha 0 is ``"0 (unpushed)"``."""
    if alpha == 0:
        return "0 (unpushed)"
    sign = "±" if both else "+" if alpha > 0 else "-"
    if scale != "unit":
        return f"{sign}{abs(alpha):g} x RMS"
    return f"{sign}{abs(alpha):g} x unit vector" + ("" if rms is None else f" ({sign}{abs(alpha) / rms:.2f} x RMS)")
