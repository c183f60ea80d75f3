"""The offline judges: measured accuracy on held-out data, caching, coherence, baselines, the CLI."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from scipy.stats import spearmanr

from emocircuits import corpora
from emocircuits import classifiers
from emocircuits import datasets as ds
from emocircuits import embeddings
from emocircuits import judges as J
from emocircuits import protocol
from emocircuits.cli import main
from emocircuits.coherence import COHERENCE_THRESHOLDS, coherence, judged, perplexity
from emocircuits.lexical import keyword_judge, keyword_success, names_emotion, paper_a_keywords


@pytest.fixture(scope="module")
def emotion_judge():
    return J.EmotionJudge()


@pytest.fixture(scope="module")
def empathy_judge():
    return J.EmpathyJudge()


def test_emotion_corpora_are_balanced_and_split_per_file_and_label():
    recs, test = corpora.emotion_corpus()
    for source, per_label in (("judge_emotion", 110), ("judge_emotion_registers", 360)):
        labels = [r["label"] for r in recs if r["source"] == source]
        assert {l: labels.count(l) for l in corpora.LABELS} == {l: per_label for l in corpora.LABELS}, source
    old = [r for r in recs if r["source"] == "judge_emotion"]
    for lab in corpora.LABELS:  # the first corpus: half replies, half statements, no label words
        styles = [r["style"] for r in old if r["label"] == lab]
        assert styles.count("reply") == styles.count("statement") == 55
    banned = ("anger", "angr", "sad", "happ", "fear", "afraid", "surpris", "disgust", "neutral", "emotion")
    assert not [r["id"] for r in old if any(w in r["text"].lower().split() for w in banned)]
    # the registers corpus: six registers of 420 texts, and emotion words allowed (real replies name them)
    regs = [r for r in recs if r["source"] == "judge_emotion_registers"]
    assert Counter(r["register"] for r in regs) == dict.fromkeys(
        ("assistant", "hard", "casual", "formal", "in_role", "dialogue"), 420)
    assert sum(names_emotion([r["text"]], [r["label"]])[0] for r in regs if r["label"] != "neutral") > 100
    assert test.sum() == 7 * 22 + 7 * 72  # 20% of each file's texts per label, seeded
    assert np.array_equal(test, corpora.emotion_corpus()[1])
    texts = [r["text"].lower() for r in recs]
    assert len(set(texts)) == len(texts)
    chat, _ = corpora.emotion_validation("chat replies to SEV prompts")
    fresh, _ = corpora.emotion_validation("fresh chat replies")
    assert not {t.lower() for t in chat + fresh} & set(texts), "validation texts are never trained on"


def test_both_emotion_judges_hold_on_chat_replies_and_on_held_out_corpus_texts(emotion_judge):
    """The tuning judge meets the goal on the chat-reply validation set (written to another brief than its
    corpus) and on its corpora's held-out texts; the reporting judge, a different kind of model, is above
    chance by far on both and agrees with it well beyond chance."""
    report = J.ReportingEmotionJudge()
    recs, test = corpora.emotion_corpus()
    train_texts = {r["text"] for r, t in zip(recs, test) if not t}
    assert not train_texts & set(emotion_judge.test_texts)
    assert set(emotion_judge.train_texts) == train_texts
    texts, labels = corpora.emotion_validation("chat replies to SEV prompts")
    truth = np.array(labels)
    for judge, overall, each in ((emotion_judge, 0.85, 0.8), (report, 0.72, 0.6)):
        pred = np.array(judge.labels(texts))
        assert np.mean(pred == truth) >= overall, type(judge).__name__
        assert min(np.mean(pred[truth == e] == e) for e in ds.EMOTIONS) >= each, type(judge).__name__
        held = np.array(judge.labels(judge.test_texts))
        assert np.mean(held == np.array(judge.test_labels)) >= 0.83
    verdicts = emotion_judge(emotion_judge.test_texts[:5])
    for v in verdicts:
        assert set(v["probs"]) == set(corpora.LABELS) and abs(sum(v["probs"].values()) - 1) < 1e-6
        assert v["label"] == max(v["probs"], key=v["probs"].get)
    both = J.agreement(emotion_judge.labels(texts), report.labels(texts))
    assert both["kappa"] >= 0.6 and both["n"] == len(texts)  # 0.69 measured
    assert 0.02 < 1 - both["agree"]  # the two kinds of model differ: they disagree on some texts


def test_emotion_judges_choose_their_setting_by_leaving_registers_out():
    """choose_c: the C with the best mean accuracy on held-out groups, ties to the smaller; the temperature
    fitted on those out-of-group logits makes the probabilities better calibrated than T = 1 would."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    X = rng.normal(size=(120, 5)) + np.eye(3, 5)[y] * 1.5
    groups = np.tile(["a", "b", "c", "d"], 30)
    c, oof, scores = classifiers.choose_c(X, y, groups, candidates=(0.5, 1.0, 2.0))
    assert set(scores) == {0.5, 1.0, 2.0} and scores[c] == max(scores.values())
    assert c == min(k for k, v in scores.items() if v == scores[c])
    assert oof.shape == (120, len(corpora.LABELS)) and (oof[:, 3:] == 0).all()
    t = classifiers.fit_temperature(oof[:, :3], y)
    from scipy.special import log_softmax
    nll = lambda T: -np.mean(log_softmax(oof[:, :3] / T, axis=1)[np.arange(120), y])
    assert nll(t) <= nll(1.0) and nll(t) <= nll(t * 1.5) and nll(t) <= nll(t / 1.5)
    with pytest.raises(J.JudgeError, match="at least two groups"):
        classifiers.choose_c(X, y, ["a"] * 120)


def test_agreement_counts_equal_labels_and_kappa():
    assert J.agreement(["anger", "fear"], ["anger", "fear"]) == {"agree": 1.0, "kappa": 1.0, "n": 2}
    got = J.agreement(["anger", "fear", "anger", "fear"], ["fear", "anger", "anger", "fear"])
    assert got["agree"] == 0.5 and got["kappa"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="2 labels against 1"):
        J.agreement(["anger", "fear"], ["anger"])


def test_empathy_judge_ranks_held_out_replies(empathy_judge):
    recs, test = corpora.empathy_corpus()
    held = [r for r, t in zip(recs, test) if t]
    clusters = np.array(corpora.situation_clusters([r["situation"] for r in recs]))
    train_clusters, held_clusters = set(clusters[~test]), set(clusters[test])
    assert not train_clusters & held_clusters  # whole clusters of situations are held out
    s = empathy_judge.score([r["reply"] for r in held], [r["situation"] for r in held])
    assert ((s >= 1) & (s <= 5)).all()
    assert spearmanr(s, [r["score"] for r in held])[0] >= 0.5
    by: dict = {}  # a labelled corpus may have two replies of one level to a situation, or none
    for r, x in zip(held, s):
        by.setdefault(r["situation"], []).append((r["score"], x))
    wins = [xh > xl for d in by.values() for sh, xh in d for sl, xl in d if sh >= 4 and sl <= 2]
    assert len(wins) > 100 and np.mean(wins) >= 0.9
    # EIA's game pairs are out of domain for the judge (never seen) and harder;
    # it still beats paper A's keyword heuristic on them.
    pairs = ds.load_named("eia_pairs")
    scen = {x.id: x for x in ds.load_named("eia_scenarios")}
    ctx = [ds.eia_prompt(scen[p.scenario]) for p in pairs]
    a = empathy_judge.score([p.positive for p in pairs], ctx)
    b = empathy_judge.score([p.negative for p in pairs], ctx)
    ka = np.array(keyword_judge([p.positive for p in pairs]))
    kb = np.array(keyword_judge([p.negative for p in pairs]))
    assert np.mean(a > b) >= 0.75 > np.mean(ka > kb)
    assert [J.EmpathyJudge.rubric_level(x) for x in (1.0, 2.9, 4.2)] == [0, 1, 2]


def test_rubric_judge_reads_paper_as_rubric_on_eia_games_it_never_saw():
    """RubricJudge trains on 20 games written for this book and is tested on replies to the five EIA games:
    it beats chance and the empathy judge's score cut into levels by a wide margin."""
    from scipy.stats import spearmanr as rho_of

    train = ds.load_named("eia_rubric_train")
    held = ds.load_named("eia_rubric_heldout")
    assert not {r.game for r in train} & set(ds.EIA_SCENARIOS) and {r.game for r in held} == set(ds.EIA_SCENARIOS)
    assert Counter((r.game, r.level) for r in held) == {(g, l): 8 for g in ds.EIA_SCENARIOS for l in (0, 1, 2)}
    judge = J.RubricJudge()
    replies, y = [r.reply for r in held], np.array([r.level for r in held])
    level, score = judge.level(replies), judge.score(replies)
    assert set(level.tolist()) <= {0, 1, 2} and ((score >= 0) & (score <= 2)).all()
    np.testing.assert_allclose(judge.proba(replies).sum(1), 1, atol=1e-6)
    emp = J.EmpathyJudge(use_all=True)
    cut = np.array([J.EmpathyJudge.rubric_level(x) for x in emp.score(replies, [r.prompt for r in held])])
    assert np.mean(level == y) >= 0.65 and np.mean(level == y) > np.mean(cut == y)
    assert rho_of(score, y)[0] >= 0.6
    with pytest.raises(TypeError, match="not one str"):
        judge.level("I stop and help.")


def test_empathy_judge_on_replies_written_to_another_brief():
    """judge_empathy_heldout (the development set): 40 messages x 5 levels written to another brief. The
    pairwise goal holds (the warmer reply of a pair scores higher in >= 0.9 of pairs) and the rank
    correlation is pinned near its measured 0.91 so that a change is seen."""
    from scipy.stats import spearmanr as rho_of

    other = ds.load_named("judge_empathy_heldout")
    s = J.EmpathyJudge(use_all=True).score([r.reply for r in other], [r.situation for r in other])
    by: dict = {}
    for r, x in zip(other, s):
        by.setdefault(r.situation, {})[r.score] = x
    assert len(by) == 40 and all(sorted(d) == [1, 2, 3, 4, 5] for d in by.values())
    assert np.mean([d[hi] > d[lo] for d in by.values() for hi in (4, 5) for lo in (1, 2)]) >= 0.9
    assert 0.88 <= rho_of(s, [r.score for r in other])[0] <= 0.94


def test_the_rule_chose_which_empathy_judge_tunes_and_the_two_are_different_instruments(monkeypatch):
    """EMPATHY_ROLE_RULE: the kind with the higher mean rho on the development sets tunes. The library's roles
    follow it; the tuning (n-gram) judge never calls the sentence encoder when it scores (so its errors are not the
    reporting judge's); both rank each warm reply written here above the dismissive one to the same message."""
    rhos = J.empathy_development_rhos()
    assert set(rhos["NgramEmpathyJudge"]) == {*corpora.EMPATHY_DEVELOPMENT, "mean"}
    assert rhos["NgramEmpathyJudge"]["mean"] > rhos["EmbeddingEmpathyJudge"]["mean"] + 0.1
    assert J.EmpathyJudge is J.NgramEmpathyJudge and J.ReportingEmpathyJudge is J.EmbeddingEmpathyJudge
    report = J.ReportingEmpathyJudge(use_all=True)
    r_warm = report.score([w for _, w, _ in RUBRIC_PAIRS])
    r_cold = report.score([c for _, _, c in RUBRIC_PAIRS])
    judge = J.EmpathyJudge(use_all=True)
    def refuse(*a, **k):
        pytest.fail("the n-gram judge read a sentence embedding")

    for home, name in ((embeddings, "embedder"), (embeddings, "embed"), (embeddings, "embed_cached"), (J, "embed"),
                       (J, "embed_cached"), (corpora, "embed_cached")):  # the encoder, and every cached route to it
        monkeypatch.setattr(home, name, refuse)
    warm = judge.score([w for _, w, _ in RUBRIC_PAIRS])
    cold = judge.score([c for _, _, c in RUBRIC_PAIRS])
    assert ((warm >= 1) & (warm <= 5)).all()
    assert (warm > cold).all() and warm.mean() - cold.mean() > 1.0
    assert (r_warm > r_cold).all()
    for j in (judge, report):
        with pytest.raises(ValueError, match="1 situations for 2 replies"):
            j.score(["a", "b"], ["s"])
        with pytest.raises(TypeError, match="not one str"):
            j.score("I am here for you.")


def test_empathy_judges_on_their_first_test_set_now_a_development_set():
    """judge_empathy_fresh: 36 forum posts x 5 replies, written and labelled blind by two processes. Read once
    as a test (tuning judge rho 0.59, reporting 0.37); the forum registers it showed failing were then written
    into judge_empathy_voices, so it is a development set. Pins chapter 02's reading with that corpus (0.68 and
    0.54, still under the writer-labeller agreement of 0.80), so that a change of either judge is seen."""
    from scipy.stats import spearmanr as rho_of

    fresh = ds.load_named("judge_empathy_fresh")
    assert len(fresh) == 180 and all(r.id in protocol.test_ids() for r in fresh)
    assert "judge_empathy_fresh" in corpora.EMPATHY_DEVELOPMENT and "judge_empathy_fresh" not in corpora.EMPATHY_CORPORA
    y = [r.score for r in fresh]
    args = ([r.reply for r in fresh], [r.situation for r in fresh])
    assert 0.63 <= rho_of(J.EmpathyJudge(use_all=True).score(*args), y)[0] <= 0.73
    assert 0.49 <= rho_of(J.ReportingEmpathyJudge(use_all=True).score(*args), y)[0] <= 0.59
    assert rho_of([r.intended for r in fresh], y)[0] == pytest.approx(0.80, abs=0.01)


def test_classifiers_are_cached_as_safetensors_and_reload_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOCIRCUITS_CACHE", str(tmp_path))
    texts = ["I am sitting with you; tell me what happened.", "Deliver the cargo first."]
    small = ds.DATA_DIR / "judge_empathy.jsonl"  # the first corpus alone keeps the fit quick
    fresh = J.EmpathyJudge(corpus=small).score(texts)
    files = list((tmp_path / "judges").iterdir())
    assert files and {f.suffix for f in files} == {".safetensors"}  # idf table and model: nothing pickled
    again = J.EmpathyJudge(corpus=small).score(texts)
    np.testing.assert_array_equal(fresh, again)
    recs = corpora.read_corpus("judge_emotion")  # 15 texts per label and style keep the fit quick
    kept, seen = [], Counter()
    for r in recs:
        if seen[(r["label"], r["style"])] < 15:
            kept.append(r)
            seen[(r["label"], r["style"])] += 1
    corpus = [tmp_path / "judge_emotion_small.jsonl"]
    corpus[0].write_text("".join(json.dumps(r) + "\n" for r in kept))
    first = J.EmotionJudge(corpus=corpus).predict_proba(texts)
    calls = []
    monkeypatch.setattr(classifiers, "choose_c", lambda *a, **k: calls.append(1))
    reloaded = J.EmotionJudge(corpus=corpus)
    np.testing.assert_allclose(reloaded.predict_proba(texts), first, rtol=1e-6)
    assert not calls, "the second judge loads its C, temperature and weights instead of choosing again"
    assert reloaded.model.C in classifiers.C_CANDIDATES and reloaded.model.temperature > 0
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.tmp*"))


def test_the_reporting_judge_embeds_the_corpus_once_for_both_of_its_variants(tmp_path, monkeypatch):
    """The reporting judge fitted on the training part and the one fitted on everything embed the corpus in
    one pass between them; given embeddings, it and the empathy judge do not run the encoder again."""
    monkeypatch.setenv("EMOCIRCUITS_CACHE", str(tmp_path))
    corpus = [ds.DATA_DIR / "judge_emotion.jsonl"]
    calls = []
    real = embeddings.embed
    def counted(texts, **kw):
        calls.append(len(texts))
        return real(texts, **kw)

    for home in (embeddings, J):  # the corpus is embedded through embeddings' cache, new texts by the judge
        monkeypatch.setattr(home, "embed", counted)
    split, full = J.ReportingEmotionJudge(corpus=corpus), J.ReportingEmotionJudge(corpus=corpus, use_all=True)
    recs, test = corpora.emotion_corpus(corpus, 0)
    assert calls == [len({r["text"] for r in recs})], "one pass over the distinct corpus texts"
    assert len(list((tmp_path / "embeddings").iterdir())) == 1
    assert not np.allclose(split.model.coef, full.model.coef), "the two variants are fitted on different texts"
    texts = ["You did WHAT? No way!", "The bus leaves at nine."]
    E = real(texts)
    calls.clear()
    np.testing.assert_allclose(full.predict_proba(texts, E), full.predict_proba(texts), atol=1e-6)
    assert calls == [2], "only the call without embeddings ran the encoder"
    with pytest.raises(ValueError, match="1 embeddings for 2 texts"):
        full.predict_proba(texts, E[:1])


def test_coherence_flags_repetition_symbols_and_empty_output():
    good, loop, junk, empty = coherence([
        "I am so sorry about your dog. Would you like to tell me about him?",
        "the the the the the the the the the the the the the the",
        "@@@ ### 123 456 !!! ??? %%% ^^^",
        "",
    ])
    assert good["coherent"] and good["score"] == 1.0
    assert not loop["coherent"] and not loop["checks"]["distinct"]
    assert not junk["checks"]["language"]
    assert not empty["checks"]["nonempty"] and not empty["coherent"]
    assert loop["longest_repeat"] > COHERENCE_THRESHOLDS["max_repeat_ngram"]
    # fluent-looking non-English (what steering can produce) fails the language check; one accent does not
    pseudo, cafe = coherence(["Maím na báí, achirí náhúa, aída a má", "Let's meet at the café and talk."])
    assert not pseudo["checks"]["language"] and cafe["coherent"]
    # letters run together into no English word (a push at the default model's middle layer)
    run_on, long_word = coherence(["LARGEURESURASSURALPAURIS SURELENGAMATURALPAURISSEURDEURDEUR DEURSE",
                                     "That was incomprehensible, and the paperwork is overwhelming."])
    assert not run_on["checks"]["language"] and long_word["coherent"]  # 17 letters is still a word
    # one word taking over passes the bigram and n-gram checks but not the top-word check
    takeover, twice, warm = coherence([
        "Alright, anger, anger, anger. I'm gonna charge you, you angry angry angry angry, anger, anger",
        "Anger is fine. Anger passes, and the day goes on without it.",
        "That's wonderful news! I'm so happy for you; you must be thrilled, and you earned every bit of it.",
    ])
    assert takeover["checks"]["distinct"] and takeover["checks"]["repetition"]
    assert not takeover["checks"]["top_word"] and not takeover["coherent"]
    assert takeover["top_word_share"] == pytest.approx(5 / 16)  # "anger" 5 of 16 words ("angry" is another word)
    assert twice["coherent"] and twice["top_word_share"] == pytest.approx(2 / 12)  # twice is not a takeover
    assert warm["coherent"]  # "you" three times is a function word
    # a pushed model's question soup passes every other check; the fragment check counts its one-word sentences
    soup, asks, cut = coherence([
        "You're not? What's she? Does she? What's she's going to be? He's? He's?He's?He'd be so",
        "Oh no. What happened? Are you okay? Do you want me to come over tonight?",
        "I'm here. Really. Take your time, and tell me whenever you want. Okay",
    ])
    assert soup["checks"]["distinct"] and soup["checks"]["repetition"] and soup["checks"]["top_word"]
    assert not soup["checks"]["fragments"] and soup["fragment_share"] == pytest.approx(6 / 7)
    assert asks["coherent"] and asks["fragment_share"] == pytest.approx(2 / 4)  # two short sentences are fine
    assert cut["coherent"] and cut["fragment_share"] == pytest.approx(2 / 3)  # the unfinished "Okay" is not counted
    # a pronoun taking over (a push at alpha = 2): every other check passes, "he" is 9 of 15 words
    he, you = coherence(["He's really He\u2019 She\u2019s, He\u2019\u2019 He\u2019\u2019 He\u2019 She\u2019 "
                           "He\u2019\u2019 He\u2019\u2019 He She\u2019\u2019 He\u2019\u2019",
                           "You did it. You really did, and you should be proud of how far you have come."])
    assert he["checks"]["distinct"] and he["checks"]["fragments"] and he["top_word_share"] < 0.1
    assert not he["checks"]["top_word"] and he["any_word_share"] == pytest.approx(9 / 15)
    assert you["coherent"] and you["any_word_share"] == pytest.approx(4 / 17)  # "you" four times is fine


def test_top_word_and_fragment_checks_pass_the_written_corpora():
    """The written replies and emotion texts (985 texts) are coherent by these checks, bar one emphatic 'nope'."""
    texts = [r["reply"] for r in corpora.read_corpus("judge_empathy")]
    texts += [r["text"] for r in corpora.read_corpus("judge_emotion")]
    checked = coherence(texts)
    failed = [t for t, c in zip(texts, checked) if not c["checks"]["top_word"]]
    assert failed == ["Used plasters floating in the swimming pool? Nope, nope, nope."]
    assert all(c["checks"]["fragments"] and c["checks"]["language"] for c in checked)
    assert max(c["any_word_share"] for c in checked if c["words"] >= 16) < 0.25  # "the", "i": at most 22%


def test_perplexity_matches_the_models_own_loss(smol):
    import torch

    text = "The cat sat on the mat and looked out of the window."
    enc = smol.encode([text])
    with torch.inference_mode():
        loss = smol.hf(**enc, labels=enc["input_ids"]).loss
    (ppl,) = perplexity(smol, [text])
    assert ppl == pytest.approx(float(torch.exp(loss)), rel=1e-4)
    shuffled = "window the mat. cat out and the of The on sat looked the"
    assert perplexity(smol, [shuffled])[0] > 2 * ppl
    with_ctx = coherence([" Paris."], lm=smol, contexts=["The capital of France is"])[0]
    assert with_ctx["perplexity"] < perplexity(smol, ["Paris."])[0]


def test_perplexity_of_each_text_after_its_context_alone_or_sharing_it(bundled):
    """A padded batch with contexts of different lengths, and texts that share a context (scored on one
    cached pass of it): each text's perplexity is the model's own loss on that text's tokens."""
    import torch

    lm = bundled
    story = lm.chat_prompt("Once upon a time, in a small village by the sea, there lived")
    contexts = ["The capital of France is", story, "Hi", story, story, story]
    texts = [" Paris, a city on the Seine.", "an old fisherman.", " there, how are you?", "a girl who sang.",
             "a dog.", "a cat, a cat, a cat, a cat."]
    got = perplexity(lm, texts, contexts, batch_size=2)  # the story's four texts: two batches of the cache
    for c, t, g in zip(contexts, texts, got):
        enc = lm.encode([c + t])
        labels = enc["input_ids"].clone()
        labels[:, :lm.encode([c])["input_ids"].shape[1]] = -100
        with torch.inference_mode():
            want = float(torch.exp(lm.hf(**enc, labels=labels).loss))
        assert g == pytest.approx(want, rel=1e-4), (c, t)
    assert got[5] < got[3]  # the repetition is easy to predict once started
    with pytest.raises(ValueError, match="contexts has 1 entries for 2 texts"):
        perplexity(lm, ["a", "b"], ["c"])


def test_keyword_baseline_counts_unchanged_outputs_as_success_for_negative_alpha():
    base = ["I understand, and I am sorry; I will help.", "Finish the task."]
    assert keyword_judge(base) == [3.0, -2.0]
    assert keyword_success(base, base, alpha=-5) == 1.0  # nothing changed, yet "success"
    assert keyword_success(base, base, alpha=+5) == 0.0
    with pytest.raises(ValueError):
        keyword_success(base, base[:1], alpha=1)


# (message, a warm reply, a dismissive reply), written for this test
RUBRIC_PAIRS = [
    ("My dog died this morning.",
     "I'm so sorry. Losing him must hurt terribly; I'm here if you want to talk about him.",
     "Dogs die. Get another one."),
    ("I failed my exam and I feel like an idiot.",
     "That sounds really painful, and it doesn't make you an idiot. Do you want to talk through what happened?",
     "Not my problem. Study harder."),
    ("My best friend moved away and I feel so lonely.",
     "I'm sorry, that kind of loneliness is hard. It makes sense you miss her; I'm glad you told me.",
     "Whatever. People move. Stop whining."),
    ("I'm scared about my surgery tomorrow.",
     "It's completely understandable to feel scared. I'm here with you, and it's okay to be afraid.",
     "Stop being dramatic, it's just surgery."),
]


def test_model_rubric_judge_reads_the_digit_distribution_and_prefers_warm_replies(smol):
    import torch

    judge = J.ModelRubricJudge(smol)
    situations = [m for m, _, _ in RUBRIC_PAIRS]
    warm = judge.score([w for _, w, _ in RUBRIC_PAIRS], situations)
    cold = judge.score([c for _, _, c in RUBRIC_PAIRS], situations)
    assert warm.shape == cold.shape == (len(RUBRIC_PAIRS),)
    assert ((warm > 1) & (warm < 5)).all() and ((cold > 1) & (cold < 5)).all()
    # even a 135M chat model ranks each warm reply above the dismissive one to the same message
    assert (warm > cold).all() and warm.mean() - cold.mean() > 0.15
    # the score is the expected digit under the next-token distribution restricted to "1".."5", read after the
    # prompt's last token: by hand on one prompt alone (no padding), equal to its score in the padded batch
    msg, reply, _ = RUBRIC_PAIRS[0]
    prompt = smol.chat_prompt(J.ModelRubricJudge.PROMPT.format(situation=msg, reply=reply))
    enc = smol.encode([prompt])
    with torch.inference_mode():
        logits = smol.hf(**enc).logits[0, -1].double()
    ids = [smol.tokenizer.encode(d, add_special_tokens=False)[0] for d in "12345"]
    p = torch.softmax(logits[ids], -1).numpy()
    assert warm[0] == pytest.approx(float(p @ np.arange(1, 6)), abs=1e-4)


class _NoModel:
    """Stands in for a model: digits are single tokens, and any use of the model itself fails the test."""

    name = "no-model"
    tokenizer = type("Tok", (), {"encode": staticmethod(lambda d, add_special_tokens=False: [int(d)])})()

    def __getattr__(self, attr):
        raise AssertionError(f"the judge used the model ({attr}) before checking its input")


def test_rubric_judges_refuse_replies_and_situations_of_different_lengths(monkeypatch):
    with pytest.raises(ValueError, match="1 situations for 2 replies; expected one situation per reply"):
        J.ModelRubricJudge(_NoModel()).score(["a", "b"], ["My dog died."])
    monkeypatch.setenv("EMOCIRCUITS_JUDGE_API_KEY", "test-key")
    judge = J.APIJudge()

    def no_request(prompt):
        raise AssertionError("APIJudge sent a request before checking its input")

    monkeypatch.setattr(judge, "_ask", no_request)
    with pytest.raises(ValueError, match="3 situations for 1 replies; expected one situation per reply"):
        judge.empathy(["a"], ["x", "y", "z"])
    monkeypatch.setattr(judge, "_ask", lambda prompt: "4")  # the check passes equal lengths and no situations
    assert judge.empathy(["a", "b"], ["x", "y"]).tolist() == [4.0, 4.0]
    assert judge.empathy(["a"]).tolist() == [4.0]


def test_api_judge_needs_its_key(monkeypatch):
    monkeypatch.delenv("EMOCIRCUITS_JUDGE_API_KEY", raising=False)
    with pytest.raises(J.JudgeError, match="EMOCIRCUITS_JUDGE_API_KEY"):
        J.APIJudge()


def test_judge_cli_writes_every_field_in_order(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"id": "a", "text": "Wait, you won the lottery? I can't believe it!"},
            {"id": "b", "text": "That's awful. I'm here; tell me what happened.", "context": "My dog died.",
             "extra": 1},
            {"id": "c", "text": ""}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    out = tmp_path / "out.jsonl"
    assert main(["judge", "--texts", str(src), "--out", str(out), "--allow-empty"]) == 0
    got = [json.loads(l) for l in out.read_text().splitlines()]
    assert [g["id"] for g in got] == ["a", "b", "c"]
    for g in got:
        assert list(g) == ["id", "emotion", "emotion_probs", "empathy", "coherence", "coherent", "emotion_report"]
        assert g["emotion"] in corpora.LABELS and 1 <= g["empathy"] <= 5 and 0 <= g["coherence"] <= 1
        assert g["emotion_report"] in corpora.LABELS
    assert got[0]["emotion"] == got[0]["emotion_report"] == "surprise"
    assert got[1]["empathy"] > got[0]["empathy"]
    assert got[2]["coherent"] is False


@pytest.mark.parametrize("line, msg", [
    (b"{not json", "in.jsonl:2: malformed JSON"),
    (b'{"text": "no id"}', "in.jsonl:2: expected an object with 'id'"),
    (b'{"id": 1, "text": "x", "context": 5}', "in.jsonl:2: field 'context'"),
    (b'{"id": 2, "text": ""}', "in.jsonl:2: field 'text' is empty; drop the line, or pass --allow-empty"),
    (b'{"id": 3, "text": "caf\xe9"}', "in.jsonl:2: not UTF-8 (byte 0xe9 at byte 23 of the line)"),
    (json.dumps({"id": 4, "text": "word " * 900}).encode(),
     "in.jsonl:2: field 'text' has 4500 characters, over the judges' limit of 4000; shorten it or pass --truncate"),
])
def test_judge_cli_bad_line_names_it_and_writes_nothing(tmp_path, capsys, line, msg):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"id": "ok", "text": "fine"}\n' + line + b"\n")
    out = tmp_path / "out.jsonl"
    assert main(["judge", "--texts", str(src), "--out", str(out)]) == 2
    assert msg in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [src]


def test_judge_cli_truncates_long_texts_only_when_asked(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    long = "I can't believe they did that to you, it is outrageous! " * 80
    src.write_text(json.dumps({"id": "long", "text": long}) + "\n")
    assert main(["judge", "--texts", str(src), "--out", str(out), "--truncate"]) == 0
    (got,) = [json.loads(l) for l in out.read_text().splitlines()]
    cut = J.EmotionJudge(use_all=True)([long[:4000]])[0]
    assert got["emotion_probs"] == pytest.approx(cut["probs"])


def test_names_emotion_finds_each_word_family():
    got = names_emotion(["I'm so angry!", "What a SURPRISING day", "Lovely weather.", "Fearless, really"],
                          ["anger", "surprise", "happiness", "fear"])
    assert got.tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="emotions \\['joy'\\]: expected one of anger"):
        names_emotion(["x"], ["joy"])
    with pytest.raises(ValueError, match="differ in length: 1 vs 2"):
        names_emotion(["x"], ["anger", "fear"])


def test_empathy_corpus_marks_each_situation_personal_or_game(tmp_path):
    recs, _ = corpora.empathy_corpus()
    prefix = {"judge_empathy": "emp-", "judge_empathy_registers": "empr-", "judge_empathy_voices": "empw-"}
    for name, counts in (("judge_empathy", [("game", 15), ("personal", 28)]),  # the dataset cards' counts
                         ("judge_empathy_registers", [("game", 22), ("personal", 62)]),
                         ("judge_empathy_voices", [("personal", 80)])):
        setting = {r["situation"]: r["setting"] for r in recs if r["id"].startswith(prefix[name])}
        assert sorted(Counter(setting.values()).items()) == counts
    bad = tmp_path / "judge_empathy.jsonl"
    bad.write_text("".join(json.dumps({**r, "setting": "work"}) + "\n" for r in recs[:5]))
    with pytest.raises(J.JudgeError, match="setting is not 'personal' or 'game'"):
        corpora.empathy_corpus(bad)


def test_read_corpus_takes_a_name_or_a_path_and_names_a_missing_one(tmp_path):
    by_name = corpora.read_corpus("judge_empathy")
    assert by_name == corpora.read_corpus(ds.DATA_DIR / "judge_empathy.jsonl") and {"situation", "reply"} <= set(by_name[0])
    with pytest.raises(FileNotFoundError, match="read_corpus\\('judge_nothing'\\)"):
        corpora.read_corpus("judge_nothing")
    assert paper_a_keywords("Sorry, I understand; the task and the goal.") == (2, 2)


def test_warm_above_cold_pairs_each_warm_reply_with_each_cold_reply_to_the_same_situation():
    # situation a: the level-5 reply scores above the level-1 one; situation b: the level-4 reply (score 3)
    # above the level-2 one (score 2) and below nothing else; the level-3 reply takes part in no pair
    wins = J.warm_above_cold([5.0, 1.0, 3.0, 2.0, 9.0], [5, 1, 4, 2, 3], ["a", "a", "b", "b", "b"])
    assert wins.tolist() == [1.0, 1.0]
    assert J.warm_above_cold([1.0, 5.0, 2.0], [5, 1, 4], ["a", "a", "b"]).tolist() == [0.0]  # no cold reply in b
    with pytest.raises(ValueError, match="same length"):
        J.warm_above_cold([1.0], [5, 1], ["a", "a"])


def test_judged_gives_the_judges_scores_and_each_replys_coherence_given_its_prompt(smol):
    texts, users = [" I'm sorry, that sounds hard.", " the the the the the the"], ["My dog died.", "Hi."]
    scores, coherent = judged(smol, lambda t, u: [len(x) + len(y) for x, y in zip(t, u)], texts, users)
    assert scores == [len(texts[0]) + len(users[0]), len(texts[1]) + len(users[1])]
    assert coherent == [c["coherent"] for c in coherence(texts, lm=smol, contexts=[smol.chat_prompt(u) for u in users])]
    with pytest.raises(ValueError, match="2 replies for 1 user messages"):
        judged(smol, lambda t, u: t, texts, users[:1])
