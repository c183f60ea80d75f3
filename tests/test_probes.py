"""Probes: directions on constructed data where the answer is known, then on the bundled model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from emocircuits import datasets as ds
from emocircuits import probes as P
from emocircuits import readout
from emocircuits.activations import capture, forget_captures
from emocircuits.cli import main
from emocircuits.personas import persona_activations, persona_directions, persona_replies


def _pairs(n=40, d=32, shift=1.5, seed=0):
    rng = np.random.default_rng(seed)
    true = np.zeros(d)
    true[3] = 1.0
    base = rng.standard_normal((n, d))  # what both sides of a pair share
    pos = base + shift * true + 0.3 * rng.standard_normal((n, d))
    neg = base - shift * true + 0.3 * rng.standard_normal((n, d))
    return pos, neg, true


def test_mean_diff_recovers_the_planted_direction_and_metrics_agree_with_sklearn():
    pos, neg, true = _pairs()
    d = readout.mean_diff(pos[:30], neg[:30])
    assert np.linalg.norm(d) == pytest.approx(1.0) and d @ true > 0.9
    det = readout.evaluate_direction(d, pos[30:], neg[30:], threshold=readout.midpoint(d, pos[:30], neg[:30]))
    s = np.r_[pos[30:] @ d, neg[30:] @ d]
    assert det.auroc == pytest.approx(roc_auc_score(np.r_[np.ones(10), np.zeros(10)], s))
    assert det.auroc_ci[0] <= det.auroc <= det.auroc_ci[1]
    assert det.accuracy_ci[0] <= det.accuracy <= det.accuracy_ci[1]
    assert det.cohens_d > 2
    # the vectorised bootstrap AUROC is the Mann-Whitney count sklearn computes
    rows_p, rows_n = np.random.default_rng(1).standard_normal((2, 5, 7))
    np.testing.assert_allclose(readout._auroc_rows(rows_p, rows_n),
                               [roc_auc_score(np.r_[np.ones(7), np.zeros(7)], np.r_[a, b])
                                for a, b in zip(rows_p, rows_n)])


def test_baselines_sit_near_chance_when_there_is_no_signal():
    pos, neg, _ = _pairs(shift=0.0, seed=2)
    rb = readout.random_baseline(pos[:30], neg[:30], pos[30:], neg[30:], n=200, seed=0)
    sb = readout.shuffled_baseline(pos[:30], neg[:30], pos[30:], neg[30:], n=50, seed=0)
    assert 0.35 < rb["mean"] < 0.65 and 0.35 < sb["mean"] < 0.65
    assert rb["p95"] < 0.9
    # with signal, the probe is far above the random directions' 95th percentile
    pos, neg, _ = _pairs(seed=3)
    d = readout.mean_diff(pos[:30], neg[:30])
    rb = readout.random_baseline(pos[:30], neg[:30], pos[30:], neg[30:], n=200, seed=0)
    det = readout.evaluate_direction(d, pos[30:], neg[30:])
    assert det.auroc > max(rb["p95"], 0.95)
    # Cohen's d of every random direction, as evaluate_direction computes it for one
    k = int(np.argmax(rb["ds"]))
    rng = np.random.default_rng(0)
    D = rng.standard_normal((200, pos.shape[1]))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    v = D[k] * np.sign((pos[:30] @ D[k]).mean() - (neg[:30] @ D[k]).mean())
    assert readout.evaluate_direction(v, pos[30:], neg[30:]).cohens_d == pytest.approx(rb["ds"][k], rel=1e-9)
    assert rb["d_p95"] == pytest.approx(np.quantile(rb["ds"], 0.95)) and det.cohens_d > rb["d_p95"]
    # paired test sides: the share of pairs the direction puts the right way round, per direction
    assert rb["paired"][k] == pytest.approx(np.mean(pos[30:] @ v > neg[30:] @ v))
    assert rb["paired_p95"] == pytest.approx(np.quantile(rb["paired"], 0.95))
    assert "paired" not in readout.random_baseline(pos[:30], neg[:30], pos[30:], neg[31:], n=5)  # unpaired sides
    # paper A's unsigned directions: the same draws, centred on chance even where the data separate,
    # so their percentile sits below the oriented one
    ru = readout.random_baseline(pos[:30], neg[:30], pos[30:], neg[30:], n=200, seed=0, oriented=False)
    assert abs(ru["mean"] - 0.5) < 0.06 and rb["mean"] > ru["mean"] and ru["p95"] <= rb["p95"]
    with pytest.raises(TypeError, match="oriented="):
        readout.random_baseline(pos[:30], neg[:30], pos[30:], neg[30:], oriented="yes")


def test_pc_baseline_tells_a_dominant_contrast_from_a_minor_one():
    pos, neg, true = _pairs(seed=5)
    pc = readout.pc_baseline(pos[:30], neg[:30], pos[30:], neg[30:], k=2)
    assert pc["auroc"][0] > 0.95 and pc["explained_variance"][0] > pc["explained_variance"][1]
    # the same contrast beside an axis that both sides of a pair share, with ten times the spread:
    # the first component is that axis and knows nothing of the contrast; the second is the contrast
    shared = np.zeros_like(pos)
    shared[:, 0] = 10 * np.random.default_rng(6).standard_normal(len(pos))
    pos, neg = pos + shared, neg + shared
    pc = readout.pc_baseline(pos[:30], neg[:30], pos[30:], neg[30:], k=2)
    assert 0.2 < pc["auroc"][0] < 0.8 and pc["auroc"][1] > 0.9
    assert pc["explained_variance"][0] > 0.5
    d = readout.mean_diff(pos[:30], neg[:30])
    assert readout.evaluate_direction(d, pos[30:], neg[30:]).auroc > 0.95
    with pytest.raises(ValueError, match="k=0"):
        readout.pc_baseline(pos[:30], neg[:30], pos[30:], neg[30:], k=0)


def test_logistic_direction_finds_the_signal_too():
    pos, neg, true = _pairs(seed=4)
    assert readout.logistic_direction(pos, neg) @ true > 0.5


def test_centred_centroids_remove_what_the_context_adds():
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    d = 20
    cls = {c: rng.standard_normal(d) for c in classes}
    X, labels, groups = [], [], []
    for g in range(12):
        ctx = rng.standard_normal(d) * 10  # a large shift shared by every class in the group
        for c in classes:
            X.append(ctx + cls[c] + 0.1 * rng.standard_normal(d))
            labels.append(c)
            groups.append(f"g{g}")
    D = readout.centred_centroids(np.array(X), labels, groups, classes)
    centred = np.stack([cls[c] for c in classes])
    centred = centred - centred.mean(0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    assert (np.sum(D * centred, 1) > 0.97).all()
    with pytest.raises(ValueError, match="group 'g0' lacks classes"):
        readout.centred_centroids(np.array(X[1:]), labels[1:], groups[1:], classes)
    with pytest.raises(ValueError, match="not in classes"):
        readout.centred_centroids(np.array(X), ["z"] + labels[1:], groups, classes)


def test_procrustes_alignment_undoes_a_rotation_between_spaces():
    rng = np.random.default_rng(0)
    low = rng.standard_normal((200, 8)) * np.arange(8, 0, -1)  # 8 meaningful dimensions
    A = low @ rng.standard_normal((8, 30)) + 1.0
    Q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    B = np.hstack([A @ Q * 2.0, np.zeros((200, 6))]) - 3.0  # rotated, scaled, wider, shifted
    align = readout.align_procrustes(A[:150], B[:150], k=8)
    mapped = align(B[150:])
    assert np.abs(mapped - A[150:]).max() < 1e-6 * np.abs(A).max() * 100
    with pytest.raises(ValueError, match="same texts"):
        readout.align_procrustes(A[:10], B[:11])


def test_auroc_ci_resamples_each_group_and_agrees_with_sklearn():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1.0, 30), rng.normal(0.0, 1.0, 50)
    est, lo, hi = readout.auroc_ci(pos, neg, seed=1)
    assert est == pytest.approx(roc_auc_score(np.r_[np.ones(30), np.zeros(50)], np.r_[pos, neg]))
    assert lo < est < hi and 0.5 < lo and hi - lo < 0.3  # a real but modest separation
    assert readout.auroc_ci(pos, neg, seed=1) == (est, lo, hi)  # seeded
    assert readout.auroc_ci(neg, neg + 0.0)[0] == 0.5
    with pytest.raises(ValueError, match="at least 2 scores in each group, got 1 positive"):
        readout.auroc_ci([1.0], neg)


def test_bad_inputs_name_what_is_accepted():
    with pytest.raises(ValueError, match="X_pos must be a non-empty 2-D array"):
        readout.mean_diff(np.zeros(3), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="widths differ"):
        readout.mean_diff(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="identical means"):
        readout.mean_diff(np.ones((2, 3)), np.ones((2, 3)))


@pytest.fixture(scope="module")
def smol_probe_dir(smol, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe")
    pairs = ds.DATA_DIR / "eia_pairs.jsonl"
    assert main(["probe", "--model", "smollm2-135m", "--pairs", str(pairs), "--out", str(out),
                 "--layers", "3,5", "--pooling", "mean_response"]) == 0
    return out


def test_probe_cli_separates_held_out_empathy_pairs_on_the_bundled_model(smol_probe_dir):
    m = json.loads((smol_probe_dir / "metrics.json").read_text())
    assert m["model"] == "smollm2-135m" and m["pooling"] == "mean_response"
    assert set(m["layers"]) == {"3", "5"} and m["best_layer"] in (3, 5)
    assert m["n_train"] == 35 and m["n_test"] == 15
    best = m["layers"][str(m["best_layer"])]
    lo, hi = best["auroc_ci"]
    assert best["auroc"] >= 0.95 and lo <= best["auroc"] <= hi
    assert best["auroc"] > m["random_baseline"]["p95"]
    assert sorted(p.name for p in smol_probe_dir.iterdir()) == ["directions.safetensors", "metrics.json"]


def test_fit_pair_probes_share_one_pass_and_match_single_fits(smol):
    pairs = ds.load_named("eia_pairs")
    scen = {s.id: s for s in ds.load_named("eia_scenarios")}
    many = P.fit_pair_probes(smol, pairs, scen, layers=[3], poolings=("mean_all", "mean_response"), n_random=10)
    forget_captures(smol)  # the single fit runs its own forward pass
    one = P.fit_pair_probe(smol, pairs, scen, layers=[3], pooling="mean_response", n_random=10)
    assert set(many) == {"mean_all", "mean_response"}
    assert many["mean_response"].metrics == one.metrics
    np.testing.assert_allclose(many["mean_response"].directions[3], one.directions[3], rtol=1e-6)
    assert many["mean_all"].metrics["pooling"] == "mean_all"
    assert many["mean_all"].metrics["layers"]["3"]["auroc"] != one.metrics["layers"]["3"]["auroc"]


def test_evaluate_pairs_scores_other_pairs_with_the_fitted_threshold(smol):
    pairs = ds.load_named("eia_pairs")
    scen = {s.id: s for s in ds.load_named("eia_scenarios")}
    probe = P.fit_pair_probe(smol, pairs, scen, layers=[3, 5], pooling="mean_response", n_random=5)
    lex = [r for r in ds.load_named("eia_lexical") if r.variant == "care_words"][:6]
    got = P.evaluate_pairs(smol, probe, lex, scen, layers=[5])
    assert list(got) == [5]
    pos, neg, starts = P.pair_texts(smol, lex, scen)
    X = capture(smol, pos + neg, ["resid_post.5"], pooling="mean_response", response_starts=starts + starts,
                progress=False)["resid_post.5"].double().numpy()
    ref = readout.evaluate_direction(probe.directions[5], X[:6], X[6:], threshold=probe.thresholds[5])
    for key, val in ref.as_dict().items():
        assert got[5].as_dict()[key] == pytest.approx(val, abs=1e-9), key
    assert set(P.evaluate_pairs(smol, probe, lex[:2], scen)) == {3, 5}  # every fitted layer by default
    with pytest.raises(ValueError, match=r"layers \[4\]: the probe has directions for layers \[3, 5\]"):
        P.evaluate_pairs(smol, probe, lex, scen, layers=[4])
    with pytest.raises(ds.DataError, match="need at least 2 pairs"):
        P.evaluate_pairs(smol, probe, lex[:1], scen)
    at5 = probe.at(5)  # the typed view of the saved metrics, keyed by int layer
    assert isinstance(at5, readout.Detection)
    assert at5.as_dict() == {k: v for k, v in probe.metrics["layers"]["5"].items() if k != "cv_auroc"}
    assert at5.auroc == probe.metrics["layers"]["5"]["auroc"] and at5.auroc_ci == tuple(
        probe.metrics["layers"]["5"]["auroc_ci"])
    assert probe.cv_auroc(5) == probe.metrics["layers"]["5"]["cv_auroc"]
    with pytest.raises(KeyError, match=r"layer 4 was not fitted; the probe has layers \[3, 5\]"):
        probe.at(4)


def test_transfer_pairs_scores_new_pairs_beside_random_directions_oriented_on_the_training_pairs(smol):
    pairs = ds.load_named("eia_pairs")[::2]  # 25 pairs (18 train) keep the test short
    scen = {s.id: s for s in ds.load_named("eia_scenarios")}
    probe = P.fit_pair_probe(smol, pairs, scen, layers=[3, 20], pooling="mean_response", n_random=5)
    matched = [r for r in ds.load_named("eia_matched") if r.split == "test"]
    got = P.transfer_pairs(smol, probe, matched, scen, layers=[20], n_random=50, seed=0)
    r = got[20]
    alone = P.evaluate_pairs(smol, probe, matched, scen, layers=[20])[20].as_dict()  # the same capture
    for key, val in alone.items():
        assert r["detection"].as_dict()[key] == pytest.approx(val, rel=1e-6), key
    # the matched pairs differ only in whom the action serves: a late layer ranks nearly all of them,
    # and far above random directions oriented on the training pairs
    assert r["paired"] >= 0.9 and r["paired_ci"][0] <= r["paired"] <= r["paired_ci"][1]
    assert r["detection"].auroc > r["random"]["p95"] + 0.1 and r["paired"] > r["random"]["paired_p95"]
    assert len(r["random"]["aurocs"]) == 50
    # the random directions are oriented on the train split only: the baseline recomputed from the train and test
    # activations (kept in memory from the fit and the transfer above, so not run again) is the one reported
    def sides(recs):
        pos, neg, starts = P.pair_texts(smol, recs, scen)
        X = capture(smol, pos + neg, ["resid_post.20"], pooling="mean_response", response_starts=starts + starts,
                    progress=False, cache="memory")["resid_post.20"].double().numpy()
        return X[:len(recs)], X[len(recs):]

    (Ptr, Ntr), (Pte, Nte) = sides([p for p in pairs if p.split == "train"]), sides(matched)
    ref = readout.random_baseline(Ptr, Ntr, Pte, Nte, n=50, seed=0)
    np.testing.assert_allclose(r["random"]["aurocs"], ref["aurocs"], rtol=1e-6)
    d = probe.directions[20]
    wins = int((Pte @ d > Nte @ d).sum())
    assert r["paired"] == wins / len(matched)
    n_m, z = len(matched), 1.959964  # Wilson's score interval, by its formula
    centre = (wins / n_m + z**2 / (2 * n_m)) / (1 + z**2 / n_m)
    half = z * np.sqrt(wins / n_m * (1 - wins / n_m) / n_m + z**2 / (4 * n_m**2)) / (1 + z**2 / n_m)
    assert r["paired_ci"] == pytest.approx((centre - half, centre + half), abs=1e-6)
    with pytest.raises(ds.DataError, match="need at least 2 pairs"):
        P.transfer_pairs(smol, probe, matched[:1], scen, layers=[20])
    with pytest.raises(ValueError, match=r"layers \[4\]: the probe has directions for layers \[3, 20\]"):
        P.transfer_pairs(smol, probe, matched, scen, layers=[4])


def test_a_probe_trained_on_matched_pairs_reads_their_test_pairs_far_above_random_directions(smol):
    """eia_matched's 40 train pairs fit the probe, its 30 test pairs test it (the stored split): a late layer
    reads them far above random directions oriented on the train pairs, and far above an early layer."""
    matched = ds.load_named("eia_matched")
    scen = {s.id: s for s in ds.load_named("eia_scenarios")}
    probe = P.fit_pair_probe(smol, matched, scen, layers=[3, 24], pooling="mean_response", n_random=50)
    m = probe.metrics
    assert (m["n_train"], m["n_test"], probe.best_layer) == (40, 30, 24)
    late, early = m["layers"]["24"]["auroc"], m["layers"]["3"]["auroc"]
    assert late >= 0.93 and late > m["random_baseline"]["p95"] + 0.15 and late > early + 0.15


def test_the_probe_layer_is_chosen_without_reading_the_test_pairs(tiny_llama):
    """Flipping every test pair's sides turns each layer's test AUROC into its complement but leaves the chosen
    layer where it was: the choice is cross-validated on the train pairs (leave one game out)."""
    pairs = ds.load_named("eia_pairs")
    scen = {s.id: s for s in ds.load_named("eia_scenarios")}
    flipped = [r.model_copy(update={"positive": r.negative, "negative": r.positive}) if r.split == "test" else r
               for r in pairs]
    a = P.fit_pair_probe(tiny_llama, pairs, scen, layers=[0, 1, 2], n_random=5)
    b = P.fit_pair_probe(tiny_llama, flipped, scen, layers=[0, 1, 2], n_random=5)
    assert a.best_layer == b.best_layer == P.best_layer(P.cv_layer_auroc(tiny_llama, pairs, scen, layers=[0, 1, 2]))
    for la in ("0", "1", "2"):
        assert a.metrics["layers"][la]["auroc"] == pytest.approx(1 - b.metrics["layers"][la]["auroc"], abs=1e-9)
        assert a.metrics["layers"][la]["cv_auroc"] == b.metrics["layers"][la]["cv_auroc"]
    assert a.metrics["layer_rule"].startswith("leave-one-scenario-out")
    assert a.metrics["test_best_layer"] == P.best_layer({la: a.metrics["layers"][str(la)]["auroc"] for la in (0, 1, 2)})


def test_best_layer_takes_the_highest_score_and_the_earliest_of_ties():
    assert P.best_layer({24: 0.9, 3: 0.9, 10: 0.5}) == 3
    assert P.best_layer({"12": 0.7, "4": 0.6, "20": 0.71}) == 20


def test_cv_layer_auroc_scores_layers_on_the_train_split_alone(smol, monkeypatch):
    """Leave-one-game-out on eia_matched's train pairs prefers a late layer to an early one, reads no test
    pair, and equals the mean of its folds computed by hand from the activations it captured."""
    seen, real = {}, P.capture

    def spy(lm, texts, sites, **kw):
        seen["texts"], seen["acts"] = list(texts), real(lm, texts, sites, **kw)
        return seen["acts"]

    monkeypatch.setattr(P, "capture", spy)  # the name probes captures through
    matched = ds.load_named("eia_matched")
    scen = {s.id: s for s in ds.load_named("eia_scenarios")}
    cv = P.cv_layer_auroc(smol, matched, scen, layers=[3, 24], pooling="mean_response")
    assert set(cv) == {3, 24} and cv[24] > cv[3] + 0.1 and cv[24] >= 0.9
    train = [r for r in matched if r.split == "train"]
    pos, neg, _ = P.pair_texts(smol, train, scen)
    assert seen["texts"] == pos + neg  # the train pairs' texts and nothing else
    X = seen["acts"]["resid_post.24"].double().numpy()
    Xp, Xn, games = X[:40], X[40:], np.array([r.scenario for r in train])
    by_hand = []
    for g in sorted(set(games)):
        d = readout.mean_diff(Xp[games != g], Xn[games != g])
        by_hand.append(roc_auc_score(np.r_[np.ones(8), np.zeros(8)], np.r_[Xp[games == g] @ d, Xn[games == g] @ d]))
    assert cv[24] == pytest.approx(np.mean(by_hand), rel=1e-9)
    with pytest.raises(ds.DataError, match="at least 2 scenarios"):
        P.cv_layer_auroc(smol, [r for r in train if r.scenario == "maze"], scen, layers=[24])


def test_score_cli_projects_texts_on_the_saved_direction(smol, smol_probe_dir, tmp_path):
    probe = P.load_probe(smol_probe_dir)
    texts = ["I put the crate down and sit with him until he can stand.", "I keep walking to the station."]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out.jsonl"
    assert main(["score", "--model", "smollm2-135m", "--probe", str(smol_probe_dir), "--texts", str(src),
                 "--out", str(out), "--layer", "3"]) == 0
    got = [json.loads(l) for l in out.read_text().splitlines()]
    X = capture(smol, texts, ["resid_post.3"], pooling="mean_all", progress=False)["resid_post.3"].double().numpy()
    np.testing.assert_allclose([g["score"] for g in got], X @ probe.directions[3], rtol=1e-5)
    assert [g["id"] for g in got] == [0, 1]


def test_probe_errors(smol, smol_probe_dir, tmp_path, capsys):
    probe = P.load_probe(smol_probe_dir)
    probe.model = "gemma3-270m"
    with pytest.raises(ValueError, match="fitted on 'gemma3-270m'"):
        P.score_texts(smol, probe, ["hi"])
    assert main(["probe", "--pairs", str(ds.DATA_DIR / "eia_pairs.jsonl"), "--out", str(tmp_path / "p"),
                 "--layers", "3,99"]) == 2
    assert "layers [99] out of range" in capsys.readouterr().err
    assert main(["probe", "--pairs", str(ds.DATA_DIR / "eia_pairs.jsonl"), "--out", str(tmp_path / "p"),
                 "--layers", "x"]) == 2
    assert "expected comma-separated integers" in capsys.readouterr().err
    assert main(["score", "--probe", str(tmp_path), "--texts", "x", "--out", str(tmp_path / "o")]) == 2
    assert "not a probe folder" in capsys.readouterr().err
    assert not (tmp_path / "p").exists() and not (tmp_path / "o").exists()


def test_centre_by_group_removes_each_groups_mean():
    X = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [12.0, 2.0]])
    C = readout.centre_by_group(X, ["a", "a", "b", "b"])
    np.testing.assert_allclose(C, [[-1, -1], [1, 1], [-1, -1], [1, 1]])
    with pytest.raises(ValueError, match="groups has 3"):
        readout.centre_by_group(X, ["a", "a", "b"])


def test_reply_texts_put_the_reply_in_the_assistant_turn(smol):
    texts, starts = P.reply_texts(smol, ["My dog died."], ["I am so sorry."])
    assert texts[0][starts[0]:] == "I am so sorry."
    assert texts[0][:starts[0]] == smol.chat_prompt("My dog died.")
    with pytest.raises(ValueError, match="1 user messages for 2 replies"):
        P.reply_texts(smol, ["a"], ["b", "c"])


def test_persona_directions_are_the_mean_difference_of_the_models_own_replies_read_after_their_prompts(smol):
    from emocircuits.generation import generate

    personas = ds.load_named("persona_pairs")[:2]
    questions = [q for q in ds.load_named("persona_questions") if q.split == "extract"][:2]
    R = persona_replies(smol, personas, questions, max_new_tokens=6)
    assert len(R) == 4 and R.question == [q.text for q in questions] * 2
    assert R.persona == [personas[0].id] * 2 + [personas[1].id] * 2
    assert R.negative_system[3] == personas[1].negative
    # each row is the model's own greedy reply (repetition penalty 1.2) under that row's system prompt
    assert R.positive[0] == generate(smol, [questions[0].text], system=personas[0].positive, max_new_tokens=6,
                                     repetition_penalty=1.2)[0]
    assert R.negative[3] == generate(smol, [questions[1].text], system=personas[1].negative, max_new_tokens=6,
                                     repetition_penalty=1.2)[0]
    assert R.positive != R.negative

    dirs = persona_directions(smol, R, [2, 5])
    assert sorted(dirs) == [2, 5] and all(np.linalg.norm(v) == pytest.approx(1.0) for v in dirs.values())

    def by_hand(system, reply, question, layer=5):
        """The reply's tokens' mean activation, from an unpooled capture of the prompt and of prompt + reply."""
        site = f"resid_post.{layer}"
        prompt = smol.chat_prompt(question, system=system)
        n_prompt = capture(smol, [prompt], [site], pooling="none", progress=False)[site][0].shape[0]
        full = capture(smol, [prompt + reply], [site], pooling="none", progress=False)[site][0]
        return full[n_prompt:].double().mean(0).numpy()

    keep = np.array([True, False, False, True])
    pos = np.stack([by_hand(R.positive_system[i], R.positive[i], R.question[i]) for i in (0, 3)])
    neg = np.stack([by_hand(R.negative_system[i], R.negative[i], R.question[i]) for i in (0, 3)])
    np.testing.assert_allclose(persona_directions(smol, R, [5], keep=keep)[5], readout.mean_diff(pos, neg), atol=1e-4)
    assert abs(persona_directions(smol, R, [5], keep=keep)[5] @ dirs[5]) < 0.999  # keep changes the answer
    # the control reads each reply after its question alone
    alone = persona_activations(smol, R, [5], system=False)[0][5][0]
    np.testing.assert_allclose(alone, by_hand(None, R.positive[0], R.question[0]), atol=1e-4)
    assert not np.allclose(alone, pos[0], atol=1e-2)

    with pytest.raises(ValueError, match="keep: expected 4 booleans"):
        persona_directions(smol, R, [5], keep=[True, False])
    with pytest.raises(ValueError, match="keep selects no row"):
        persona_directions(smol, R, [5], keep=np.zeros(4, bool))
    # a row with an empty reply has nothing to average: it is left out, as if not kept
    blank = dataclasses.replace(R, negative=[R.negative[0], "", " ", R.negative[3]])
    np.testing.assert_allclose(persona_directions(smol, blank, [5])[5], readout.mean_diff(pos, neg), atol=1e-4)
    assert blank.complete.tolist() == keep.tolist() and blank.select([3]).negative == [R.negative[3]]
    with pytest.raises(ValueError, match="no tokens after their response_starts"):
        persona_activations(smol, blank, [5])
    with pytest.raises(ValueError, match=r"layers \[99\]"):
        persona_directions(smol, R, [99])
    with pytest.raises(ValueError, match="personas: expected .* records with a non-empty 'positive'"):
        persona_replies(smol, ["be kind"], questions)
    with pytest.raises(ValueError, match="questions: expected .*got an empty one"):
        persona_replies(smol, personas, [])
