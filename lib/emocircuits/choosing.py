"""Choice rules: which setting to carry forward, read from discovery data only (chapters 04 and 06).

Every rule here is written down before the data it reads is generated; those that read judged replies
refuse a test record (:func:`emocircuits.protocol.refuse_test_records`)."""

from __future__ import annotations

from typing import Sequence

from .protocol import refuse_test_records


def best_setting(table, record_ids: Sequence[str], min_coherent: float = 0.9):
    """The row of a :func:`both_ways` table to carry forward: coherent enough first, then the largest share.

    Ranked by (coherent share >= ``min_coherent``, share, coherent share):
    a setting that keeps replies coherent beats one that moves more prompts
    by breaking them. Ties go to the smaller |alpha| (the gentler push, when the tied settings share a
    scale). ``record_ids`` names the data records the table's prompts were made from (the situations'
    ids); a test record among them, or a missing one, is refused
    (:func:`emocircuits.protocol.refuse_test_records`): a setting is chosen on discovery situations only.
    """
    if isinstance(record_ids, str):
        raise ValueError(f"record_ids={record_ids!r}: expected a list of record ids, not one string")
    refuse_test_records(record_ids, "best_setting")
    if len(table) == 0:
        raise ValueError("the both_ways table is empty: no setting had replies at +alpha, -alpha and 0")
    t = table.assign(_ok=table.coherent_share >= min_coherent, _neg_alpha=-table.alpha)
    return t.sort_values(["_ok", "share", "coherent_share", "_neg_alpha"], kind="stable").iloc[-1].drop(
        ["_ok", "_neg_alpha"])


def best_at_coherence(tables: dict, levels: Sequence[float] | None = None):
    """Each method's best accuracy among its settings that keep at least a given coherent share.

    ``tables`` maps a method's name to a table with one row per strength
    and columns ``accuracy`` and ``coherent`` (shares of replies). For a
    coherence requirement ``c``, a method's value is the highest accuracy
    of its settings with ``coherent >= c`` (NaN when none reaches ``c``):
    the comparison "at equal coherence" without interpolating between grid
    points. ``levels`` default to every coherent share any method reached.
    Returns a pandas DataFrame indexed by the requirement, one column per
    method.
    """
    import pandas as pd

    if not tables:
        raise ValueError("tables is empty: expected {method: table with accuracy and coherent columns}")
    for name, t in tables.items():
        missing = sorted({"accuracy", "coherent"} - set(t.columns))
        if missing:
            raise ValueError(f"tables[{name!r}] needs rows with columns accuracy and coherent; missing {missing}")
        if len(t) == 0:
            raise ValueError(f"tables[{name!r}] has no rows")
    if levels is None:
        levels = sorted({float(c) for t in tables.values() for c in t.coherent})
    out = {name: [float(t.accuracy[t.coherent >= c].max()) if (t.coherent >= c).any() else float("nan")
                  for c in levels] for name, t in tables.items()}
    return pd.DataFrame(out, index=pd.Index([float(c) for c in levels], name="coherent share at least"))


def choose_strength(replies, min_coherent: float = 0.9, by: str | None = None, option: str = "scale"):
    """The strength (or other candidate) a tuning run picks: the smallest that reaches the best accuracy
    among those keeping at least ``min_coherent`` of the replies coherent; when none keeps that many, the
    most accurate one.

    ``replies`` is a table with one row per judged reply and columns
    ``scale`` (the strength it was generated with), ``hit`` (judged as the
    target), ``coherent`` (booleans) and ``record_id`` (the data record the
    prompt was built from): a reply made from a test record is refused
    (:func:`emocircuits.protocol.refuse_test_records`), so the choice reads
    discovery data only. With ``by`` (a column, e.g.
    ``"emotion"``) the rule is applied to each group's replies on its own
    and a dict {group: strength} is returned; otherwise one value.
    ``option`` names the column holding the candidates, if not ``scale``
    (e.g. a way of building the circuits): ties go to the first candidate in
    that column's sort order, so give it an ordered categorical to rank them.
    A reply without its candidate (a missing value in that column) is an error.
    """
    import pandas as pd

    if not isinstance(replies, pd.DataFrame):
        raise ValueError(f"replies must be a pandas DataFrame of judged replies; got {type(replies).__name__}")
    if not 0 <= min_coherent <= 1:
        raise ValueError(f"min_coherent must be a share in [0, 1]; got {min_coherent}")
    need = {option, "hit", "coherent", "record_id"} | ({by} if by is not None else set())
    missing = sorted(need - set(replies.columns))
    if missing:
        raise ValueError(f"replies needs columns {sorted(need)}; missing {missing}")
    if len(replies) == 0:
        raise ValueError("replies has no rows: nothing to choose a strength from")
    refuse_test_records(replies["record_id"], "choose_strength: replies['record_id']")
    if replies[option].isna().any():
        raise ValueError(f"replies[{option!r}] has missing values: every reply needs the candidate it was made with")

    def rule(rows):
        t = rows.groupby(option, observed=True).agg(accuracy=("hit", "mean"), coherent=("coherent", "mean"))
        ok = t[t.coherent >= min_coherent].sort_index()
        pool = ok if len(ok) else t.sort_index()
        best = pool.accuracy.idxmax()  # idxmax takes the first (smallest) candidate among ties
        return float(best) if option == "scale" else best

    if by is None:
        return rule(replies)
    if replies[by].isna().any():
        raise ValueError(f"replies[{by!r}] has missing values: every reply needs its group to pick per {by}")
    return {key: rule(rows) for key, rows in replies.groupby(by, sort=False)}
