"""Keeping choices away from test data: declared experiments and the test records no choice may read.

Every headline experiment of the book chooses something (a layer, a strength, a way of building circuits)
on *discovery* data and is then judged once on *test* data. An :class:`Experiment` declares, in code and
before it runs, what it chooses among, by which rule, with which judge, on which data, and what it is
tested on; a chapter shows the declaration above its results (:meth:`Experiment.table`).

The choice functions (``choosing.choose_strength``, ``choosing.best_setting``) call
:func:`refuse_test_records`: replies made from a record of a test split (:data:`TEST_SPLITS`), or from a
record they cannot name, are refused, so a choice cannot be tuned on test replies by accident.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from .datasets import DATA_DIR

# The files (or a file's ``split``) whose records are test data for some experiment: no choice reads them.
TEST_SPLITS: dict[str, str | None] = {
    "sev_test": None,  # every record: chapter 04's held-out and fresh scenarios
    "situations_confirm": None,  # chapter 06's one confirmation
    "eia_pairs": "test",
    "eia_matched": "test",
    "judge_emotion_chat": None,  # the emotion judges' validation sets
    "judge_emotion_fresh": None,
    "judge_emotion_bundled": None,
    "judge_empathy_heldout": None,  # the empathy judges' development and test sets
    "judge_empathy_fresh": None,
    "judge_empathy_assistant": None,
    "eia_rubric_heldout": None,
}


class ProtocolError(ValueError):
    """A choice was asked to read test data."""


@lru_cache(maxsize=4)
def _test_ids(data_dir: str) -> frozenset[str]:
    ids = set()
    for stem, split in TEST_SPLITS.items():
        path = Path(data_dir) / f"{stem}.jsonl"
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    if split is None or rec.get("split") == split:
                        ids.add(rec["id"])
    return frozenset(ids)


def test_ids(data_dir: str | Path | None = None) -> frozenset[str]:
    """The ids of every test record (:data:`TEST_SPLITS`) in the bundled data folder or ``data_dir``."""
    return _test_ids(str(data_dir or DATA_DIR))


def refuse_test_records(record_ids: Iterable, where: str) -> None:
    """Raise :class:`ProtocolError` unless every one of ``record_ids`` (the data records replies or prompts
    were made from) is given and none belongs to a test split; ``where`` names the choice that was about to
    read them. A missing id (None, NaN or blank) is refused too: an unknown record could be a test one."""
    ids = list(record_ids)
    if not ids:
        raise ProtocolError(f"{where}: no record ids; name the data records the choice reads (e.g. the "
                            f"situations_heldout ids of the situations a setting is chosen on)")
    blank = [i for i, r in enumerate(ids) if r is None or (isinstance(r, float) and r != r) or not str(r).strip()]
    if blank:
        raise ProtocolError(f"{where}: record id missing at positions {blank[:5]}: every reply needs the record "
                            f"its prompt was built from, so that test records can be refused")
    seen = sorted({str(r) for r in ids} & test_ids())
    if seen:
        raise ProtocolError(f"{where}: {len(seen)} record(s) of a test split among the replies to choose from "
                            f"({', '.join(seen[:5])}{', ...' if len(seen) > 5 else ''}); choose on discovery "
                            f"records and judge test records once")


@dataclass(frozen=True)
class Experiment:
    """One headline experiment, declared before it runs.

    ``candidates`` maps what is chosen to the values tried; ``rule`` says how one is picked (in words,
    naming the function that applies it); ``tuning_judge`` is the judge the rule reads; ``discovery`` and
    ``test`` describe the data each step reads. ``test`` is generated and judged once, after the choice.
    """

    name: str
    discovery: str
    candidates: dict = field(default_factory=dict)
    rule: str = ""
    tuning_judge: str = "EmotionJudge (chapter 02)"
    reporting_judge: str = "ReportingEmotionJudge (chapter 02)"
    test: str = ""

    def __post_init__(self):
        for name in ("name", "discovery", "rule", "test"):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"Experiment {self.name!r}: {name!r} must be declared (a non-empty description)")

    def table(self):
        """The declaration as a one-column table for the chapter."""
        import pandas as pd

        cands = "; ".join(f"{k}: {', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in vs)}"
                          for k, vs in self.candidates.items()) or "none"
        return pd.DataFrame({self.name: {"discovery data": self.discovery, "candidates": cands, "rule": self.rule,
                                         "tuning judge": self.tuning_judge, "reporting judge": self.reporting_judge,
                                         "test data (judged once)": self.test}})
