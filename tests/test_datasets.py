"""The datasets: every validation error, prompts, splits, lexical ablation, elicitation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emocircuits import datasets as ds
from emocircuits.cli import main
from emocircuits.generation import elicit

GOOD_PAIR = {"id": "p1", "scenario": "maze", "positive": "I stop to help.", "negative": "I keep running.",
             "split": "train"}


def _write(tmp_path: Path, name: str, rows) -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("rows,match", [
    (['{"id": "p1", "scenario": "maze"'], r"eia_pairs.jsonl:1: malformed JSON"),
    ([GOOD_PAIR, {k: v for k, v in GOOD_PAIR.items() if k != "negative"} | {"id": "p2"}],
     r":2: field 'negative': missing"),
    ([GOOD_PAIR, GOOD_PAIR], r":2: field 'id': duplicate id 'p1' \(first on line 1\)"),
    ([GOOD_PAIR | {"positive": "   "}], r":1: field 'positive': .*non-empty"),
    ([GOOD_PAIR | {"scenario": "chess"}], r":1: field 'scenario': unknown scenario 'chess'; expected one of duel"),
    ([GOOD_PAIR, GOOD_PAIR | {"id": "p2", "split": "test"}], r":2: field 'split': split overlap.*line 1"),
    ([GOOD_PAIR | {"split": "dev"}], r":1: field 'split': Input should be 'train' or 'test'"),
    (["[1, 2]"], r":1: expected a JSON object"),
    ([GOOD_PAIR, ""], r":2: empty line"),
])
def test_pair_file_errors_name_line_and_field(tmp_path, rows, match):
    path = _write(tmp_path, "eia_pairs.jsonl", rows)
    with pytest.raises(ds.DataError, match=match):
        ds.load(path)
    assert main(["data", "validate", str(path)]) == 1


def test_unknown_emotion_in_generations(tmp_path):
    rec = {"id": "g1", "model": "m", "prompt_id": "p", "emotion": "boredom", "user": "u", "text": "t", "seed": 0,
           "settings": {}}
    path = _write(tmp_path, "generations.jsonl", [rec])
    with pytest.raises(ds.DataError, match=r":1: field 'emotion': Input should be 'anger', 'sadness'"):
        ds.load(path)


def test_emotion_word_in_a_sev_event_is_rejected(tmp_path):
    rec = {"id": "s1", "split": "discovery", "theme": "work", "scenario": "You are at your desk.",
           "positive": "Your boss is happy with you.", "neutral": "The printer hums.", "negative": "The bus is late."}
    path = _write(tmp_path, "sev_discovery.jsonl", [rec])
    with pytest.raises(ds.DataError, match=r"field 'positive': .*names an emotion \('happy'\)"):
        ds.load(path)
    with pytest.raises(ds.DataError, match=r"field 'theme': Input should be 'work'.*got 'space'"):
        ds.load(_write(tmp_path, "sev_test.jsonl", [rec | {"theme": "space"}]))


def test_unknown_file_kind_and_missing_file(tmp_path):
    with pytest.raises(ds.DataError, match="cannot tell the dataset kind"):
        ds.load(_write(tmp_path, "mystery.jsonl", [GOOD_PAIR]))
    with pytest.raises(ds.DataError, match="no such file"):
        ds.load(tmp_path / "nope.jsonl")
    assert ds.load(_write(tmp_path, "mystery.jsonl", [GOOD_PAIR]), kind="pairs")[0].id == "p1"


def test_bundled_datasets_are_valid_and_sized():
    counts = ds.validate_all()
    assert counts["sev_discovery"] == 160 and counts["sev_test"] == 160
    assert counts["eia_scenarios"] == 5 and counts["eia_pairs"] >= 50
    assert counts["situations_heldout"] >= 25 and counts["situations_confirm"] == 24
    assert counts["persona_pairs"] >= 5 and counts["persona_questions"] >= 20
    for name in ds.FILES:
        assert main(["data", "validate", str(ds.DATA_DIR / f"{name}.jsonl")]) == 0
    # every file in data/ has a schema: none is left to validate by hand
    assert sorted(p.stem for p in ds.DATA_DIR.glob("*.jsonl")) == sorted(ds.FILES)


def test_emotion_replies_are_balanced_unnamed_and_apart_from_the_judge_corpus(tmp_path):
    """Chapter 04's variant reads these replies: 24 per emotion, none naming its emotion, none in the judge's corpus
    (validate_all refuses a copied text, naming it)."""
    recs = ds.load_named("emotion_replies")
    assert {e: sum(r.label == e for r in recs) for e in ds.EMOTIONS} == dict.fromkeys(ds.EMOTIONS, 24)
    assert len({r.text for r in recs}) == len(recs)
    with pytest.raises(ds.DataError, match=r"emotion_replies.jsonl:1: .*names an emotion \('scared'\)"):
        ds.load(_write(tmp_path, "emotion_replies.jsonl", [{"id": "r1", "label": "fear", "text": "I'm scared."}]))
    for name in ds.FILES:  # a copy of the bundled data, with one judge text among the replies
        (tmp_path / f"{name}.jsonl").write_text((ds.DATA_DIR / f"{name}.jsonl").read_text())
    judge_text = json.loads((ds.DATA_DIR / "judge_emotion.jsonl").read_text().splitlines()[0])["text"]
    (tmp_path / "judge_emotion.jsonl").write_text((ds.DATA_DIR / "judge_emotion.jsonl").read_text())
    _write(tmp_path, "emotion_replies.jsonl", [{"id": "r1", "label": "anger", "text": judge_text}])
    with pytest.raises(ds.DataError, match=r"emotion_replies.jsonl: texts also in judge_emotion.jsonl: \['r1'\]"):
        ds.validate_all(tmp_path)


def test_confirmation_situations_are_used_by_one_chapter_only():
    """situations_confirm exists to confirm chapter 06's choice once: no other chapter and no library code may
    read it (chapter 01 only counts every file, the transcoder corpus names it to leave it out, and the protocol
    names it as a test split that no choice may read)."""
    root = ds.ROOT
    readers = sorted(p.name for p in [*(root / "notebooks").glob("*.py"), *(root / "lib" / "emocircuits").glob("*.py")]
                     if "situations_confirm" in p.read_text())
    assert readers == ["06_steering.py", "datasets.py", "protocol.py", "transcoders.py"]
    from emocircuits import transcoders as T

    assert "situations_confirm" in T.CORPUS_EXCLUDE
    held = {r.text for r in ds.load_named("situations_heldout")}
    assert not held & {r.text for r in ds.load_named("situations_confirm")}


def test_sev_design():
    disc = ds.load_named("sev_discovery")
    for theme in ds.THEMES:
        assert sum(r.theme == theme for r in disc) == 20
    prompts = ds.sev_prompts(disc)
    assert len(prompts) == 160 * 3 * 6
    p = prompts[0]
    assert p["system"] == "Always reply in anger.\nKeep the reply to at most two sentences."
    assert p["user"] == f"{disc[0].scenario}\n{disc[0].positive}"
    bare = ds.sev_prompts(disc[:2], emotions=None)
    assert len(bare) == 6 and all(b["system"] is None and b["emotion"] is None for b in bare)
    with pytest.raises(ds.DataError, match="unknown emotion 'joy'"):
        ds.sev_prompts(disc[:1], emotions=["joy"])
    # the first n of each theme, themes in order of appearance
    two = ds.first_per_theme(disc, 2)
    assert len(two) == 2 * len(ds.THEMES) and [r.theme for r in two[::2]] == list(dict.fromkeys(r.theme for r in disc))
    assert all(r is next(x for x in disc if x.theme == r.theme) for r in two[::2])
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            ds.first_per_theme(disc, bad)


def test_eia_split_is_stored_seeded_and_balanced():
    pairs = ds.load_named("eia_pairs")
    train, test = ds.split(pairs, "train"), ds.split(pairs, "test")
    assert (len(train), len(test)) == (35, 15)
    for scen in ds.EIA_SCENARIOS:
        assert sum(r.scenario == scen for r in test) == 3
    again = ds.assign_split([p.model_copy(update={"split": None}) for p in pairs], 3, seed=0)
    assert [r.split for r in again] == [r.split for r in pairs]  # the stored split is the seeded one
    other = ds.assign_split(pairs, 3, seed=1)
    assert [r.split for r in other] != [r.split for r in pairs]


def test_lexical_ablation_replaces_on_both_sides():
    pair = ds.PairRecord(id="x", scenario="maze", positive="I'm so sorry you feel hurt. I care, and I will listen.",
                         negative="Sorry, I have to keep going; I understand the route.")
    (out,), counts = ds.lexical_ablation([pair])
    assert out.positive == "I'm so aware you think affected. I attend, and I will attend."
    assert out.negative == "Aware, I have to keep going; I see the route."
    assert counts == {"positive": 5, "negative": 2}
    assert 35 <= len(ds.EMPATHY_KEYWORDS) <= 50
    real, counts = ds.lexical_ablation(ds.load_named("eia_pairs"))
    assert counts["positive"] > 0 and counts["negative"] > 0
    assert all(ds.ablate_text(r.positive)[1] == 0 for r in real)  # nothing left to replace


def test_lexical_stress_pairs_hold_their_design():
    """eia_lexical: care-word pairs carry the keywords on the empathic side only, polite-task pairs on the
    task side only; each game has two of each; lengths match within a pair; no text is in eia_pairs."""
    lex = ds.load_named("eia_lexical")
    assert len(lex) == 20 and all(r.split == "test" for r in lex)
    for scen in ds.EIA_SCENARIOS:
        assert sorted(r.variant for r in lex if r.scenario == scen) == ["care_words"] * 2 + ["polite_task"] * 2
    for r in lex:
        kp, kn = ds.keyword_counts([r.positive, r.negative])
        if r.variant == "care_words":
            assert kp >= 4 and kn == 0, r.id
        else:
            assert kp == 0 and kn >= 3, r.id
        lp, ln = len(r.positive.split()), len(r.negative.split())
        assert max(lp, ln) / min(lp, ln) < 1.4, r.id
    stored = {t for p in ds.load_named("eia_pairs") for t in (p.positive, p.negative)}
    assert not stored & {t for r in lex for t in (r.positive, r.negative)}


def test_matched_pairs_hold_their_design():
    """eia_matched: six test and eight train pairs per game whose sides share their first word, length and
    plain register (no care word on either side), so only whom the action serves tells them apart; no text
    is reused, within the file or from the other pair sets."""
    matched = ds.load_named("eia_matched")
    assert len(matched) == 70 and {r.split for r in matched} == {"train", "test"}
    for scen in ds.EIA_SCENARIOS:
        assert sum(r.scenario == scen and r.split == "test" for r in matched) == 6
        assert sum(r.scenario == scen and r.split == "train" for r in matched) == 8
    texts = [t for r in matched for t in (r.positive, r.negative)]
    assert len(set(texts)) == len(texts)
    for r in matched:
        assert ds.keyword_counts([r.positive, r.negative]).tolist() == [0, 0], r.id
        lp, ln = len(r.positive.split()), len(r.negative.split())
        assert max(lp, ln) / min(lp, ln) <= 1.2 and 15 <= min(lp, ln), r.id
        assert r.positive.split()[0] == r.negative.split()[0], r.id
    others = {t for name in ("eia_pairs", "eia_lexical") for p in ds.load_named(name) for t in (p.positive, p.negative)}
    assert not others & {t for r in matched for t in (r.positive, r.negative)}


def test_keyword_counts_count_whole_words_only():
    got = ds.keyword_counts(["I'm sorry; I feel your pain.", "A painful, careful sort of task.", ""])
    np.testing.assert_array_equal(got, [3, 0, 0])
    with pytest.raises(ds.DataError, match="texts: expected a list of strings"):
        ds.keyword_counts("sorry")


def test_stats_cli(capsys):
    assert main(["data", "stats", str(ds.DATA_DIR / "eia_pairs.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "35" in out and "food_delivery" in out


def test_elicit_stores_generations_and_acceptance(smol, tmp_path):
    disc = ds.load_named("sev_discovery")[:1]
    prompts = [p for p in ds.sev_prompts(disc, emotions=["sadness", "anger"]) if p["valence"] == "negative"]

    def judge(texts):  # a fixed verdict, to check the bookkeeping
        return [{"label": "sadness", "p": 1.0} for _ in texts]

    out = tmp_path / "generations-test.jsonl"
    recs = elicit(smol, prompts, max_new_tokens=12, judge=judge, out=out, progress=False)
    assert [r.accepted for r in recs] == [True, False]
    assert all(r.text and r.model == "smollm2-135m" and r.settings["max_new_tokens"] == 12 for r in recs)
    assert [r.id for r in ds.load(out)] == [r.id for r in recs]
    from emocircuits.generation import generate

    assert recs[0].text == generate(smol, [prompts[0]["user"]], system=prompts[0]["system"], max_new_tokens=12)[0]
    with pytest.raises(ds.DataError, match="unknown emotion 'joy'"):
        elicit(smol, [{"id": "x", "user": "hi", "emotion": "joy"}])
