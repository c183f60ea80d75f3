"""The project's datasets: schemas, loading with validation, prompts, splits and transforms (chapter 01).

Every dataset is a JSONL file in ``data/`` with one record per line and a
pydantic model below; ``data/README.md`` is the card for all of them.

=========================  ==================  =========================================
file                       kind                what
=========================  ==================  =========================================
sev_discovery.jsonl        ``sev``             8 themes x 20 scenarios, 3 events each
sev_test.jsonl             ``sev``             the same themes, different skeletons
eia_scenarios.jsonl        ``eia_scenarios``   5 games modelled on Empathy-in-Action
eia_pairs.jsonl            ``pairs``           empathic / task-focused replies, 35/15 split
circuit_prompts.jsonl      ``prompts``         paper C's system prompts and situations
situations_heldout.jsonl   ``situations``      further situations written here
situations_confirm.jsonl   ``situations``      situations kept for one confirmation (chapter 06)
persona_pairs.jsonl        ``pairs``           empathetic / apathetic system instructions
persona_questions.jsonl    ``questions``       extraction and evaluation questions
=========================  ==================  =========================================

Contrastive pairs share one format, ``{"id", "scenario", "positive",
"negative", ...}``, where ``positive`` is the empathic side.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Optional

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from .cache import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = ROOT / "data"

EMOTIONS = ("anger", "sadness", "happiness", "fear", "surprise", "disgust")
THEMES = ("work", "school", "family", "friends", "health", "travel", "home", "leisure")
VALENCES = ("positive", "neutral", "negative")
EIA_SCENARIOS = ("food_delivery", "listener", "protector", "duel", "maze")

# paper B's prompt, as its released code writes it (a newline between the sentences)
EMOTION_SYSTEM = "Always reply in {emotion}.\nKeep the reply to at most two sentences."
# paper A's steering prompt for the EIA games
EIA_PROMPT = "{objective}\n\n{empathy_pressure}\n\nWhat do you do?"

# Words that would give the emotion away in an SEV scenario or event.
EMOTION_WORDS = (
    "anger", "angry", "angrily", "mad", "furious", "rage", "sad", "sadness", "sadly", "unhappy", "happy",
    "happiness", "happily", "joy", "joyful", "glad", "fear", "afraid", "scared", "frightened", "terrified",
    "surprise", "surprised", "surprising", "surprisingly", "shocked", "disgust", "disgusted", "disgusting",
    "gross", "emotion", "emotional", "feel", "feeling", "feelings", "upset", "delighted", "excited",
    "nervous", "anxious", "worried",
)
_EMOTION_RE = re.compile(r"\b(" + "|".join(EMOTION_WORDS) + r")\b", re.IGNORECASE)


class DataError(ValueError):
    """A dataset file or record is invalid; the message names the file, line and field."""


def _nonempty(v: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("must be a non-empty string")
    return v


# A string field that must hold some non-blank text (checked after the type, as a field validator would be).
Text = Annotated[str, AfterValidator(_nonempty)]


def _no_emotion_word(v: str, advice: str) -> str:
    _nonempty(v)
    m = _EMOTION_RE.search(v)
    if m:
        raise ValueError(f"names an emotion ({m.group(0)!r}); {advice}")
    return v


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Text


class SEVRecord(_Record):
    split: Literal["discovery", "test"]
    theme: Literal[THEMES]  # type: ignore[valid-type]
    scenario: str
    positive: str
    neutral: str
    negative: str

    @field_validator("scenario", "positive", "neutral", "negative")
    @classmethod
    def _no_emotion_words(cls, v):
        return _no_emotion_word(v, "describe the event, not the feeling")


class EIAScenario(_Record):
    title: Text
    objective: Text
    empathy_pressure: Text
    rubric: dict[Literal["0", "1", "2"], str]

    @field_validator("rubric")
    @classmethod
    def _rubric(cls, v):
        if sorted(v) != ["0", "1", "2"] or not all(s.strip() for s in v.values()):
            raise ValueError("must have non-empty descriptions for scores '0', '1' and '2'")
        return v


class PairRecord(_Record):
    model_config = ConfigDict(extra="allow")
    scenario: Text
    positive: Text
    negative: Text
    split: Optional[Literal["train", "test"]] = None


class PromptRecord(_Record):
    kind: Literal["system_empathetic", "system_neutral", "situation"]
    text: Text
    source: Text


class SituationRecord(_Record):
    text: Text


class QuestionRecord(SituationRecord):
    split: Literal["extract", "eval"]


class EmotionReplyRecord(_Record):
    """A short reply that expresses one emotion through content and tone, without naming it."""
    label: Literal[EMOTIONS]  # type: ignore[valid-type]
    text: str

    @field_validator("text")
    @classmethod
    def _no_emotion_words(cls, v):
        return _no_emotion_word(v, "express it through content and tone")


class JudgeEmotionRecord(_Record):
    """A labelled text of the emotion judges' training corpora (``judge_emotion*.jsonl``)."""
    label: Literal[EMOTIONS + ("neutral",)]  # type: ignore[valid-type]
    text: str
    style: Optional[Literal["reply", "statement"]] = None
    register_: Optional[Literal["assistant", "hard", "casual", "formal", "in_role", "dialogue"]] = Field(
        None, alias="register")

    @field_validator("text")
    @classmethod
    def _text(cls, v):
        _nonempty(v)
        if not 1 <= len(v.split()) <= 80:
            raise ValueError(f"must have 1 to 80 words, has {len(v.split())}")
        return v


class EmotionValidationRecord(_Record):
    """A reply written to an SEV prompt of the test split, labelled with the emotion it was asked for
    (``judge_emotion_chat.jsonl``: the emotion judges' validation set, never trained on)."""
    label: Literal[EMOTIONS]  # type: ignore[valid-type]
    prompt: Text
    valence: Literal[VALENCES]  # type: ignore[valid-type]
    text: Text


class BundledLabelRecord(_Record):
    """A bundled model's reply labelled by hand (``judge_emotion_bundled.jsonl``): the emotion it expresses,
    or ``unclear`` where the text is too broken to read."""
    label: Literal[EMOTIONS + ("neutral", "unclear")]  # type: ignore[valid-type]
    model: Text
    how: Text
    asked: Literal[EMOTIONS]  # type: ignore[valid-type]
    record_id: Text
    text: Text


class JudgeEmpathyRecord(_Record):
    """A reply to a situation scored 1-5 for empathy (``judge_empathy.jsonl``)."""
    situation: Text
    setting: Literal["personal", "game"]
    reply: Text
    score: Literal[1, 2, 3, 4, 5]


class EmpathyValidationRecord(JudgeEmpathyRecord):
    """A reply scored 1-5 by a labeller who did not write it, with the level its writer meant
    (``judge_empathy_fresh.jsonl``, ``judge_empathy_voices.jsonl``, ``judge_empathy_assistant.jsonl``)."""
    intended: Literal[1, 2, 3, 4, 5]


class RubricRecord(_Record):
    """A reply to a game prompt with its Empathy-in-Action rubric level (``eia_rubric_*.jsonl``)."""
    game: Text
    prompt: Text
    reply: Text
    level: Literal[0, 1, 2]
    split: Literal["train", "test"]


class GenerationRecord(_Record):
    model_config = ConfigDict(extra="allow")
    model: str
    prompt_id: str
    emotion: Optional[Literal[EMOTIONS]] = None  # type: ignore[valid-type]
    system: Optional[str] = None
    user: str
    text: str
    seed: int
    settings: dict[str, Any]
    judge: Optional[dict[str, Any]] = None
    accepted: Optional[bool] = None


SCHEMAS: dict[str, type[BaseModel]] = {
    "sev": SEVRecord, "eia_scenarios": EIAScenario, "pairs": PairRecord, "prompts": PromptRecord,
    "situations": SituationRecord, "questions": QuestionRecord, "generations": GenerationRecord,
    "emotion_replies": EmotionReplyRecord, "judge_emotion": JudgeEmotionRecord,
    "emotion_validation": EmotionValidationRecord, "judge_empathy": JudgeEmpathyRecord, "rubric": RubricRecord,
    "empathy_validation": EmpathyValidationRecord,
    "emotion_bundled": BundledLabelRecord,
}

FILES = {
    "sev_discovery": "sev", "sev_test": "sev", "eia_scenarios": "eia_scenarios", "eia_pairs": "pairs",
    "eia_lexical": "pairs", "eia_matched": "pairs", "persona_pairs": "pairs", "circuit_prompts": "prompts",
    "situations_heldout": "situations", "situations_confirm": "situations", "persona_questions": "questions",
    "emotion_replies": "emotion_replies", "judge_emotion": "judge_emotion",
    "judge_emotion_registers": "judge_emotion", "judge_emotion_chat": "emotion_validation",
    "judge_emotion_fresh": "emotion_validation",
    "judge_empathy": "judge_empathy", "judge_empathy_registers": "judge_empathy",
    "judge_empathy_heldout": "judge_empathy", "judge_empathy_fresh": "empathy_validation",
    "judge_empathy_voices": "empathy_validation", "judge_empathy_assistant": "empathy_validation",
    "eia_rubric_train": "rubric",
    "eia_rubric_heldout": "rubric", "judge_emotion_bundled": "emotion_bundled",
}


def kind_of(path: str | Path) -> str:
    """The schema a file uses, from its name (``generations*`` files are generations)."""
    stem = Path(path).name.split(".")[0]
    if stem in FILES:
        return FILES[stem]
    if stem.startswith("generations") or stem.startswith("elicit"):
        return "generations"
    raise DataError(f"{path}: cannot tell the dataset kind from the file name; pass kind= one of "
                    f"{', '.join(SCHEMAS)} (known files: {', '.join(f + '.jsonl' for f in FILES)})")


def _text_of(rec: BaseModel) -> str:
    for field in ("scenario", "text", "positive"):
        if hasattr(rec, field) and not (field == "scenario" and isinstance(rec, PairRecord)):
            return getattr(rec, field)
    return rec.id


def load(path: str | Path, kind: str | None = None) -> list[BaseModel]:
    """Read and validate a JSONL dataset; raises :class:`DataError` at the first problem.

    Checks per line: valid JSON, the kind's fields and types, non-empty texts,
    known emotions/themes/scenarios; across lines: unique ids, and no text
    that appears in two splits.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    kind = kind or kind_of(path)
    if kind not in SCHEMAS:
        raise DataError(f"kind={kind!r}: expected one of {', '.join(SCHEMAS)}")
    schema = SCHEMAS[kind]
    known_scenarios = None
    if kind == "pairs" and path.name.startswith("eia_"):  # pairs written for the EIA games
        known_scenarios = set(EIA_SCENARIOS)
    records, seen, split_of = [], {}, {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                raise DataError(f"{path}:{lineno}: empty line; every line must hold one JSON record")
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: malformed JSON ({err.msg} at character {err.pos})") from None
            if not isinstance(raw, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(raw).__name__}")
            try:
                rec = schema.model_validate(raw)
            except ValidationError as err:
                e = err.errors()[0]
                field = ".".join(str(p) for p in e["loc"]) or "(record)"
                what = "missing" if e["type"] == "missing" else e["msg"]
                got = "" if e["type"] == "missing" else f", got {e.get('input')!r}"
                raise DataError(f"{path}:{lineno}: field {field!r}: {what}{got}") from None
            if rec.id in seen:
                raise DataError(f"{path}:{lineno}: field 'id': duplicate id {rec.id!r} (first on line {seen[rec.id]})")
            seen[rec.id] = lineno
            if known_scenarios is not None and rec.scenario not in known_scenarios:
                raise DataError(f"{path}:{lineno}: field 'scenario': unknown scenario {rec.scenario!r}; expected "
                                f"one of {', '.join(sorted(known_scenarios))}")
            split = getattr(rec, "split", None)
            if split is not None:
                key = _text_of(rec).strip().lower()
                if key in split_of and split_of[key][0] != split:
                    raise DataError(f"{path}:{lineno}: field 'split': split overlap, the same text is in "
                                    f"{split!r} here and in {split_of[key][0]!r} on line {split_of[key][1]}")
                split_of.setdefault(key, (split, lineno))
            records.append(rec)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def load_named(name: str) -> list[BaseModel]:
    """Load a bundled dataset by its file stem, e.g. ``load_named("eia_pairs")``."""
    if name not in FILES:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(FILES)}")
    return load(DATA_DIR / f"{name}.jsonl")


def validate_all(data_dir: Path = DATA_DIR) -> dict[str, int]:
    """Load every bundled dataset; also checks that SEV discovery and test share no scenario, and that the
    emotion replies (chapter 04's directions from text) share no text with the emotion judge's corpus."""
    counts = {name: len(load(data_dir / f"{name}.jsonl")) for name in FILES}
    disc = {r.scenario.strip().lower() for r in load(data_dir / "sev_discovery.jsonl")}
    overlap = [r.id for r in load(data_dir / "sev_test.jsonl") if r.scenario.strip().lower() in disc]
    if overlap:
        raise DataError(f"sev_test.jsonl: split overlap with sev_discovery.jsonl: {overlap[:5]}")
    judged = {json.loads(line)["text"].strip().lower()
              for line in (data_dir / "judge_emotion.jsonl").read_text().splitlines() if line.strip()}
    overlap = [r.id for r in load(data_dir / "emotion_replies.jsonl") if r.text.strip().lower() in judged]
    if overlap:
        raise DataError(f"emotion_replies.jsonl: texts also in judge_emotion.jsonl: {overlap[:5]}")
    return counts


def stats(records: list[BaseModel]) -> dict[str, Counter]:
    """Counts per split, scenario, theme and emotion (whichever the records have)."""
    out: dict[str, Counter] = {"total": Counter({"records": len(records)})}
    for field in ("split", "scenario", "theme", "emotion", "kind", "accepted"):
        vals = [getattr(r, field, None) for r in records]
        if field == "scenario" and records and isinstance(records[0], SEVRecord):
            continue
        if any(v is not None for v in vals):
            out[field] = Counter("none" if v is None else str(v) for v in vals)
    return out


# ---------------------------------------------------------------------------
# prompts


def first_per_theme(records: Iterable[SEVRecord], n: int) -> list[SEVRecord]:
    """The first ``n`` records of each theme, themes in the order they first appear."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n={n!r}: expected a positive integer")
    per: dict[str, list] = {}
    for r in records:
        per.setdefault(r.theme, []).append(r)
    return [r for rs in per.values() for r in rs[:n]]


def sev_prompts(records: Iterable[SEVRecord], emotions: Iterable[str] | None = EMOTIONS,
                valences: Iterable[str] = VALENCES) -> list[dict]:
    """Paper B's prompts, built by code: one per (scenario, event valence, emotion).

    With ``emotions=None`` the system prompt is left out (the steering setting).
    """
    emos = list(emotions) if emotions is not None else [None]
    for e in emos:
        if e is not None and e not in EMOTIONS:
            raise DataError(f"unknown emotion {e!r}; expected one of {', '.join(EMOTIONS)}")
    out = []
    for r in records:
        for v in valences:
            if v not in VALENCES:
                raise DataError(f"unknown valence {v!r}; expected one of {', '.join(VALENCES)}")
            for e in emos:
                out.append({"id": f"{r.id}:{v}:{e or 'none'}", "record_id": r.id, "theme": r.theme, "valence": v,
                            "emotion": e, "system": EMOTION_SYSTEM.format(emotion=e) if e else None,
                            "user": f"{r.scenario}\n{getattr(r, v)}"})
    return out


def eia_prompt(scenario: EIAScenario) -> str:
    return EIA_PROMPT.format(objective=scenario.objective, empathy_pressure=scenario.empathy_pressure)


# ---------------------------------------------------------------------------
# splits


def assign_split(records: list[PairRecord], n_test_per_scenario: int, seed: int = 0) -> list[PairRecord]:
    """A seeded train/test split balanced by scenario (same number of test pairs from each)."""
    by_scen: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_scen.setdefault(r.scenario, []).append(i)
    rng = np.random.default_rng(seed)
    test = set()
    for scen in sorted(by_scen):
        idx = by_scen[scen]
        if n_test_per_scenario >= len(idx):
            raise DataError(f"scenario {scen!r} has {len(idx)} pairs; cannot hold out {n_test_per_scenario}")
        test.update(rng.choice(idx, size=n_test_per_scenario, replace=False).tolist())
    return [r.model_copy(update={"split": "test" if i in test else "train"}) for i, r in enumerate(records)]


def split(records: list[BaseModel], name: str) -> list[BaseModel]:
    got = [r for r in records if getattr(r, "split", None) == name]
    if not got:
        raise DataError(f"no records in split {name!r}")
    return got


# ---------------------------------------------------------------------------
# lexical ablation

# Empathy keywords and neutral replacements (lowercase). Chosen so that the
# replacement keeps the part of speech and drops the caring connotation.
EMPATHY_KEYWORDS: dict[str, str] = {
    "sorry": "aware", "apologize": "note", "feel": "think", "feeling": "thinking", "feelings": "thoughts",
    "felt": "thought", "understand": "see", "understanding": "noting", "care": "attend", "caring": "attentive",
    "cares": "attends", "comfort": "assist", "comforting": "assisting", "support": "assist",
    "supporting": "assisting", "supportive": "useful", "empathy": "attention", "empathize": "engage",
    "compassion": "attention", "compassionate": "attentive", "kind": "fair", "kindly": "plainly",
    "gentle": "steady", "gently": "steadily", "listen": "attend", "listening": "attending", "hear": "note",
    "worry": "issue", "worried": "occupied", "concern": "matter", "concerned": "occupied", "safe": "set",
    "hurt": "affected", "hurting": "affected", "pain": "condition", "distress": "situation",
    "upset": "affected", "wellbeing": "status", "reassure": "inform", "warmth": "clarity", "warm": "clear",
    "heart": "mind", "struggling": "working", "alone": "separate",
}
_KW_RE = re.compile(r"\b(" + "|".join(sorted(EMPATHY_KEYWORDS, key=len, reverse=True)) + r")\b", re.IGNORECASE)


def ablate_text(text: str) -> tuple[str, int]:
    """Replace every empathy keyword by its neutral synonym; returns (text, replacements)."""
    count = 0

    def sub(m: re.Match) -> str:
        nonlocal count
        count += 1
        word = m.group(0)
        rep = EMPATHY_KEYWORDS[word.lower()]
        if word.isupper() and len(word) > 1:
            return rep.upper()
        return rep[0].upper() + rep[1:] if word[0].isupper() else rep

    return _KW_RE.sub(sub, text), count


def keyword_counts(texts: list[str]) -> np.ndarray:
    """How many empathy keywords each text holds: the score of a purely lexical detector."""
    if isinstance(texts, str):
        raise DataError("texts: expected a list of strings, got one string")
    return np.array([len(_KW_RE.findall(t)) for t in texts], dtype=float)


def lexical_ablation(records: list[PairRecord]) -> tuple[list[PairRecord], dict[str, int]]:
    """Ablate both sides of every pair; returns the new records and replacement counts per side."""
    out, counts = [], {"positive": 0, "negative": 0}
    for r in records:
        pos, n_pos = ablate_text(r.positive)
        neg, n_neg = ablate_text(r.negative)
        counts["positive"] += n_pos
        counts["negative"] += n_neg
        out.append(r.model_copy(update={"positive": pos, "negative": neg}))
    return out, counts


# ---------------------------------------------------------------------------
# writing


def write_jsonl(path: str | Path, records: Iterable[BaseModel | dict]) -> Path:
    """Write records atomically, one JSON object per line, keys in schema order."""
    lines = []
    for r in records:
        d = r.model_dump(exclude_none=True) if isinstance(r, BaseModel) else r
        lines.append(json.dumps(d, ensure_ascii=False))
    return atomic_write_text(path, "\n".join(lines) + "\n")
