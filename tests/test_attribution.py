"""Transcoders and attribution graphs on tiny models of both layouts: exactness, files, resuming, interventions."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from emocircuits import attribution as A
from emocircuits import features
from emocircuits import fidelity
from emocircuits import plots
from emocircuits import training
from emocircuits import transcoders as T
from emocircuits.activations import capture
from emocircuits.generation import forward
from emocircuits.interventions import Transcode

from testkit import CORPUS

TEXT = CORPUS[0] + " " + CORPUS[1]
SETTINGS = dict(n_features=96, k=8, epochs=2, batch_size=8, checkpoint_every=3)


@pytest.fixture
def tiny(tiny_arch):
    """Each architecture in turn (conftest.tiny_arch)."""
    return tiny_arch


@pytest.fixture
def tset(tiny, tmp_path):
    return training.train(tiny, CORPUS, training.TrainSettings(**SETTINGS), folder=tmp_path / "tc", progress=False)


def test_replacement_model_reproduces_the_real_forward_pass(tiny, tset):
    ctx = A.prepare(tiny, tset, TEXT)
    pres, z, _ = A.linear_forward(ctx, ctx.emb, ctx.act, ctx.err)
    logits = z @ A._weights(ctx)["W_U"].T
    torch.testing.assert_close(logits, ctx.logits, rtol=1e-4, atol=1e-5)
    for pre, act in zip(pres, ctx.act):  # active features: pre-activation == activation
        torch.testing.assert_close(pre, act, rtol=1e-4, atol=1e-5)
    assert all(int((p == 0).sum()) == 0 for p in ctx.pos), "BOS features belong to the error node"


def test_edges_into_each_node_sum_to_its_value(tiny, tset):
    g = A.attribution_graph(tiny, tset, TEXT, max_features=30, batch_size=7)
    assert g.check["max_rel_error"] < 1e-4 and g.check["logit_vs_model"] < 1e-4
    assert len(g.features) == 30 and g.n_active > 30
    nf = len(g.features)
    # sources come before targets: no feature gets an edge from its own layer or later, nor from later positions
    for t in range(nf):
        lt, pt = g.features[t][:2]
        for s in np.nonzero(g.adjacency[t, :nf])[0]:
            ls, ps = g.features[s][:2]
            assert ls < lt and ps <= pt
    assert np.all(g.influence >= -1e-9) and g.influence[g.logit_index] == pytest.approx(0.0)
    kept = A.prune(g, node_threshold=0.5)
    assert kept["nodes"][g.logit_index] and 1 <= kept["features_kept"] <= nf
    assert kept["edges"].sum() <= (np.abs(g.adjacency) > 0).sum()


def test_direct_effects_match_the_graph_columns(tiny_llama, tmp_path):
    ts = training.train(tiny_llama, CORPUS, training.TrainSettings(**SETTINGS), folder=tmp_path / "tc", progress=False)
    ctx = A.prepare(tiny_llama, ts, TEXT)
    g = A.attribution_graph(tiny_llama, ts, TEXT, max_features=60, ctx=ctx)
    nodes = ctx.feature_nodes()
    index = {n[:3]: i for i, n in enumerate(nodes)}
    src = min(range(len(g.features)), key=lambda i: g.features[i][0])  # an early-layer source
    col = A.direct_effects_from(ctx, g.features[src][:3])
    for t, node in enumerate(g.features):
        assert g.adjacency[t, src] == pytest.approx(float(col[index[node[:3]]]), abs=1e-5)


def test_growth_follows_positive_effects(tiny_llama, tmp_path):
    ts = training.train(tiny_llama, CORPUS, training.TrainSettings(**SETTINGS), folder=tmp_path / "tc", progress=False)
    ctx = A.prepare(tiny_llama, ts, TEXT)
    seed = next(n[:3] for n in ctx.feature_nodes() if n[0] == 0)
    steps = A.grow(ctx, seed, k=3, steps=2)
    assert steps[0][0][:3] == seed and 1 <= len(steps) <= 3
    picked = [n[:3] for s in steps for n in s]
    assert len(picked) == len(set(picked))
    for n in steps[1]:
        assert n[0] > seed[0] and n[3] > 0 and len(steps[1]) <= 3
    rel = A.grow(ctx, seed, k=3, steps=1, relative=True)
    acts = {n[:3]: n[3] for n in ctx.feature_nodes()}
    col = A.direct_effects_from(ctx, seed)
    index = {n[:3]: i for i, n in enumerate(ctx.feature_nodes())}
    for la, p, f, score in rel[1]:
        assert score == pytest.approx(float(col[index[(la, p, f)]]) / acts[(la, p, f)], rel=1e-4)
    with pytest.raises(A.AttributionError, match="not active"):
        A.grow(ctx, (0, 1, 10_000), k=2)


def test_sparse_decoder_matches_the_dense_product():
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(40, 6, generator=g, requires_grad=True)
    pre = torch.randn(9, 40, generator=g, requires_grad=True)
    vals, idx = pre.topk(5, dim=-1)
    sparse = training._sparse_decode(idx, torch.relu(vals), W_dec)
    dense = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals)) @ W_dec
    torch.testing.assert_close(sparse, dense)
    gs = torch.autograd.grad(sparse.pow(2).sum(), (W_dec, pre), retain_graph=True)
    gd = torch.autograd.grad(dense.pow(2).sum(), (W_dec, pre))
    for a, b in zip(gs, gd):
        torch.testing.assert_close(a, b)


def test_learning_rate_decays_over_the_last_steps(tiny_llama):
    tr = training._Trainer(tiny_llama, training.TrainSettings(**SETTINGS, lr_decay=0.5), "x", n_batches=5)  # 10 steps
    rates = [tr.lr_at(s) for s in range(10)]
    assert rates[:5] == [tr.st.lr] * 5
    assert rates[5:] == pytest.approx([tr.st.lr * f for f in (1.0, 0.8, 0.6, 0.4, 0.2)])
    flat = training._Trainer(tiny_llama, training.TrainSettings(**SETTINGS), "x", n_batches=5)
    assert {flat.lr_at(s) for s in range(10)} == {flat.st.lr}


def test_files_roundtrip_and_training_resumes(tiny_llama, tmp_path):
    st = training.TrainSettings(**SETTINGS, lr_decay=0.5)  # the schedule must resume where it stopped too
    full = training.train(tiny_llama, CORPUS, st, folder=tmp_path / "a", progress=False)
    part = training.train(tiny_llama, CORPUS, st, folder=tmp_path / "b", progress=False, stop_after_steps=4)
    assert (tmp_path / "b" / "checkpoint.safetensors").is_file() and not (tmp_path / "b" / "config.json").exists()
    assert not torch.equal(part[1].W_enc, full[1].W_enc)
    resumed = training.train(tiny_llama, CORPUS, st, folder=tmp_path / "b", progress=False)
    for la in full:
        torch.testing.assert_close(resumed[la].W_enc, full[la].W_enc)
        torch.testing.assert_close(resumed[la].W_dec, full[la].W_dec)
    assert not (tmp_path / "b" / "checkpoint.safetensors").exists()
    loaded = T.TranscoderSet.load(tmp_path / "a")
    assert loaded[2].cfg == full[2].cfg and torch.equal(loaded[2].b_dec, full[2].b_dec)
    assert torch.allclose(loaded[0].W_dec.norm(dim=1), torch.ones(st.n_features), atol=1e-5)
    assert not list(tmp_path.glob("a/.*tmp"))
    with pytest.raises(T.TranscoderError, match="layers"):
        T.TranscoderSet.load(tmp_path / "a", layers=[7])


def test_published_formats_load(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    W_enc, W_dec = torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g)
    b_enc, b_dec, thr = torch.randn(12, generator=g), torch.randn(5, generator=g), torch.rand(12, generator=g)
    save_file({"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec,
               "activation_function.threshold": thr}, str(tmp_path / "layer_3.safetensors"))
    np.savez(tmp_path / "params.npz", W_enc=W_enc.T.numpy(), W_dec=W_dec.numpy(), b_enc=b_enc.numpy(),
             b_dec=b_dec.numpy(), threshold=thr.numpy())
    x = torch.randn(4, 5, generator=g)
    ct = T.load_layer_file(tmp_path / "layer_3.safetensors", layer=3)
    gs = T.load_layer_file(tmp_path / "params.npz", layer=3)
    pre = x @ W_enc.T + b_enc
    expect = (pre * (pre > thr)) @ W_dec + b_dec
    for tc in (ct, gs):
        assert tc.cfg.activation == "jumprelu" and tc.layer == 3
        torch.testing.assert_close(tc(x), expect)
    W_skip = torch.randn(5, 5, generator=g)
    save_file({"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec, "W_skip": W_skip},
              str(tmp_path / "skip.safetensors"))
    sk = T.load_layer_file(tmp_path / "skip.safetensors", layer=0)
    assert sk.cfg.activation == "relu" and sk.cfg.skip
    torch.testing.assert_close(sk(x), torch.relu(pre) @ W_dec + b_dec + x @ W_skip.T)
    with pytest.raises(T.TranscoderError, match="pass layer="):
        T.load_layer_file(tmp_path / "layer_3.safetensors")
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(T.TranscoderError, match="expected a .safetensors or .npz"):
        T.load_layer_file(tmp_path / "w.bin", layer=0)
    # whole sets, their configs and the hub: tests/test_published.py


def test_bad_settings_are_named(tiny_llama, tmp_path):
    with pytest.raises(T.TranscoderError, match="k=0"):
        training.train(tiny_llama, CORPUS, training.TrainSettings(n_features=8, k=0), folder=tmp_path)
    with pytest.raises(T.TranscoderError, match="texts is empty"):
        training.train(tiny_llama, ["", " "], folder=tmp_path)
    with pytest.raises(T.TranscoderError, match="layers"):
        training.train(tiny_llama, CORPUS, training.TrainSettings(layers=[5]), folder=tmp_path)
    with pytest.raises(T.TranscoderError, match="lr_decay=1.5"):
        training.train(tiny_llama, CORPUS, training.TrainSettings(n_features=8, k=2, lr_decay=1.5), folder=tmp_path)
    with pytest.raises(T.TranscoderError, match="activation"):
        T.TranscoderConfig(d_model=4, n_features=8, layer=0, activation="gelu")


def test_splice_and_clamp_act_on_mlp_out(tiny, tset):
    la = 1
    tc = tset[la]
    site_in, site_out = f"mlp_in.{la}", f"mlp_out.{la}"
    for text in CORPUS[:3]:  # one at a time: no padding, so column 0 is the first token
        base = capture(tiny, [text], [site_in, site_out], pooling="none", progress=False)
        x, y0 = base[site_in][0], base[site_out][0]
        y = capture(tiny, [text], [site_out], pooling="none", progress=False,
                    interventions=[Transcode(tc, splice=True)])[site_out][0]
        torch.testing.assert_close(y[1:], tc(x)[1:], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(y[0], y0[0])  # the first token keeps its MLP
        y1 = capture(tiny, [text], [site_out], pooling="none", progress=False,
                     interventions=[Transcode(tc, clamp={4: 3.0})])[site_out][0]
        want = y0 + (3.0 - tc.encode(x)[:, 4])[:, None] * tc.W_dec[4]
        torch.testing.assert_close(y1[1:], want[1:], rtol=1e-4, atol=1e-5)
    # a transcoder in another dtype is cast once (a copy; the original is left as it was)
    tc64 = copy.deepcopy(tc).double()
    iv = Transcode(tc64, splice=True)
    y64 = capture(tiny, [CORPUS[0]], [site_out], pooling="none", progress=False, interventions=[iv])[site_out][0]
    x = capture(tiny, [CORPUS[0]], [site_in], pooling="none", progress=False)[site_in][0]
    torch.testing.assert_close(y64[1:], tc(x)[1:], rtol=1e-4, atol=1e-5)
    assert tc64.W_dec.dtype == torch.float64
    assert [t.W_dec.dtype for t in iv._casts.values()] == [torch.float32]
    # the rest of the model sees the change
    assert not torch.allclose(forward(tiny, CORPUS[:2]), forward(tiny, CORPUS[:2], [Transcode(tc, clamp={4: 3.0})]))
    with pytest.raises(ValueError, match="out of range"):
        Transcode(tc, clamp={10_000: 1.0})
    with pytest.raises(ValueError, match="clamp"):
        Transcode(tc)


def test_quality_and_losses_are_measured(tiny_llama, tmp_path):
    ts = training.train(tiny_llama, CORPUS, training.TrainSettings(**SETTINGS), folder=tmp_path / "tc", progress=False)
    q = fidelity.quality(tiny_llama, ts, CORPUS[:10], baseline_texts=CORPUS[10:60])
    for la, row in q.items():
        assert row["l0"] <= 8 + 1e-9 and 0 <= row["dead"] <= 1 and row["fve"] <= 1
        assert row["linear_fve"] > 0.9  # five sentences repeated: a linear map fitted on them fits them
    # variance explained by hand: 1 - SSE / SST over every token but each text's first, from the real MLP's
    # input and output and the transcoder's reconstruction of it
    xin, xout, mask, _ = T.mlp_io(tiny_llama, CORPUS[:10], sorted(ts))
    keep = T.first_left_out(mask)
    for la in ts:
        x, y = xin[la][keep].float().cpu(), xout[la][keep].float().cpu().double()
        with torch.no_grad():
            y_hat = ts[la](x).double()
        by_hand = 1 - float((y_hat - y).pow(2).sum()) / float((y - y.mean(0)).pow(2).sum())
        assert q[la]["fve"] == pytest.approx(by_hand, abs=1e-5)
        assert q[la]["tokens"] == int(keep.sum())
    # training helps: the finished set explains far more than the same set after its first batch
    early = training.train(tiny_llama, CORPUS, training.TrainSettings(**SETTINGS), folder=tmp_path / "early", progress=False,
                    stop_after_steps=1)
    q_early = fidelity.quality(tiny_llama, early, CORPUS[:10])
    for la in ts:
        assert q[la]["fve"] > 0.2 and q[la]["fve"] > q_early[la]["fve"] + 0.3
    assert all(np.isnan(r["linear_fve"]) for r in fidelity.quality(tiny_llama, ts, CORPUS[:4]).values())
    losses = fidelity.splice_losses(tiny_llama, ts, CORPUS[:4])
    assert set(losses["each"]) == {0, 1, 2} and losses["clean"] > 0
    assert losses["all"] != losses["clean"]
    # the largest activations come from the same passes as max_activations would make
    q = fidelity.quality(tiny_llama, ts, CORPUS[:10], with_max=True)
    direct = fidelity.max_activations(tiny_llama, ts, CORPUS[:10])
    for la in ts:
        torch.testing.assert_close(q[la]["max_act"], direct[la], rtol=1e-5, atol=1e-5)
        assert float(q[la]["max_act"].max()) > 0
    with pytest.raises(TypeError, match="with_max"):
        fidelity.quality(tiny_llama, ts, CORPUS[:2], with_max="yes")
    # a second held-out slice, read in the same passes, measures as it would alone, with the same linear map
    both = fidelity.quality(tiny_llama, ts, CORPUS[:10], baseline_texts=CORPUS[10:60], fresh_texts=CORPUS[60:70])
    alone = fidelity.quality(tiny_llama, ts, CORPUS[60:70], baseline_texts=CORPUS[10:60])
    for la in ts:
        assert both[la]["fresh_fve"] == pytest.approx(alone[la]["fve"], abs=1e-5)
        assert both[la]["fresh_linear_fve"] == pytest.approx(alone[la]["linear_fve"], abs=1e-5)
        assert both[la]["fve"] == pytest.approx(q[la]["fve"], abs=1e-5) and both[la]["tokens"] == q[la]["tokens"]
        assert np.isnan(q[la]["fresh_fve"]) and np.isnan(q[la]["fresh_linear_fve"])
    with pytest.raises(ValueError, match="texts is empty"):
        fidelity.quality(tiny_llama, ts, [], fresh_texts=CORPUS[:2])


def test_splice_losses_reuse_the_clean_run_below_the_layer(tiny, tset):
    """Skipping the blocks under the changed layer gives what full forwards give, on both layouts."""
    from emocircuits.interventions import Set

    texts = CORPUS[:5]
    got = fidelity.splice_losses(tiny, tset, texts, batch_size=3)
    assert got["clean"] == pytest.approx(fidelity.next_token_loss(tiny, texts, batch_size=3), abs=1e-6)
    assert got["all"] == pytest.approx(
        fidelity.next_token_loss(tiny, texts, [Transcode(tc, splice=True) for tc in tset.values()], batch_size=3), abs=1e-6)
    for la in tset:
        one = fidelity.next_token_loss(tiny, texts, [Transcode(tset[la], splice=True)], batch_size=3)
        zero = fidelity.next_token_loss(tiny, texts, [Set(f"mlp_out.{la}", list(range(tiny.d_model)), 0.0)], batch_size=3)
        assert got["each"][la] == pytest.approx(one, abs=1e-5)
        assert got["zero_mlp"][la] == pytest.approx(zero, abs=1e-5)
    # a layer's own change shows: the conditions differ from clean and from each other
    assert len({round(v, 6) for v in got["each"].values()} | {round(got["clean"], 6)}) > 2


def test_step_activity_and_persistence(tiny_llama, tmp_path):
    ts = training.train(tiny_llama, CORPUS, training.TrainSettings(**SETTINGS), folder=tmp_path / "tc", progress=False)
    prompts = [CORPUS[0], CORPUS[1]]
    replies = [tiny_llama.tokenizer.encode(" and more", add_special_tokens=False)] * 2
    act = features.step_activity(tiny_llama, ts, prompts, replies)
    assert set(act) == {0, 1, 2} and act[0].shape == (2, 96)
    assert np.all((act[1] >= 0) & (act[1] <= 1))
    # the feature of highest share: recomputed by hand at the steps of reply 0
    enc = tiny_llama.encode([prompts[0]])["input_ids"][0]
    n = len(enc)
    full = capture(tiny_llama, [prompts[0] + " and more"], ["mlp_in.1"], pooling="none", progress=False)["mlp_in.1"][0]
    f = ts[1].encode(full[n - 1:n - 1 + len(replies[0])])
    np.testing.assert_allclose(act[1][0], (f > 0).float().mean(0).numpy(), atol=1e-6)
    rows = features.persistent(act, threshold=1.0)
    for la, feat, lo, mean in rows:
        assert lo == pytest.approx(1.0) and act[la][:, feat].min() == pytest.approx(1.0)


def test_top_contexts_and_token_lens(tiny_llama, tmp_path):
    ts = training.train(tiny_llama, CORPUS, training.TrainSettings(**SETTINGS), folder=tmp_path / "tc", progress=False)
    texts = CORPUS[:5]
    acts = capture(tiny_llama, texts, ["mlp_in.1"], pooling="none", progress=False)["mlp_in.1"]
    f = [ts[1].encode(x)[1:] for x in acts]  # first token left out
    feat = int(torch.stack([a.max(0).values for a in f]).max(0).values.argmax())
    got = features.top_contexts(tiny_llama, ts, [(1, feat)], texts, top=2)[(1, feat)]
    best = sorted((float(a[:, feat].max()), i) for i, a in enumerate(f))[::-1][:2]
    assert [g["text_index"] for g in got] == [i for _, i in best]
    assert got[0]["activation"] == pytest.approx(best[0][0], rel=1e-4)
    lens = features.token_lens(tiny_llama, ts[1], feat, top=3)
    assert set(lens) == {"reads", "writes", "suppresses"} and len(lens["writes"]) == 3
    assert lens["writes"][0][1] >= lens["writes"][-1][1]
    with pytest.raises(A.AttributionError, match="not in the transcoder set"):
        features.top_contexts(tiny_llama, ts, [(7, 0)], texts)
    card, = features.feature_cards(tiny_llama, ts, [(1, feat)], texts, top=3, contexts=2)
    assert card["feature"] == f"L1/F{feat}" and card["writes"] == " ".join(repr(t) for t, _ in lens["writes"])
    assert card["top contexts"].count(" | ") == 1 and f"({got[0]['activation']:.1f})" in card["top contexts"]


def test_project_corpus_shapes_each_file_and_leaves_out_the_stress_pairs(tiny_llama, tmp_path):
    from emocircuits import datasets as ds

    for name in ("sev_test", "situations_heldout", "eia_pairs", "eia_lexical", "eia_matched", "situations_confirm",
                 "emotion_replies"):
        (tmp_path / f"{name}.jsonl").write_text((ds.DATA_DIR / f"{name}.jsonl").read_text().splitlines()[0] + "\n")
    sev = json.loads((tmp_path / "sev_test.jsonl").read_text())
    pair = json.loads((tmp_path / "eia_pairs.jsonl").read_text())
    situation = json.loads((tmp_path / "situations_heldout.jsonl").read_text())
    got = T.project_corpus(tiny_llama, replies=[("How are you?", "Fine.")], data_dir=tmp_path)
    assert got == [pair["negative"], pair["positive"],  # eia_pairs: its text fields in key order
                   *(f"{sev['scenario']} {sev[k]}" for k in ("positive", "neutral", "negative")),
                   tiny_llama.chat_prompt(situation["text"]),
                   tiny_llama.chat_prompt("How are you?") + "Fine."]
    for left_out in ("eia_lexical", "eia_matched", "situations_confirm", "emotion_replies"):
        assert left_out in T.CORPUS_EXCLUDE
        text = json.loads((tmp_path / f"{left_out}.jsonl").read_text())
        assert not any(v in t for t in got for v in text.values() if isinstance(v, str) and len(v) > 20)


def test_the_graph_picture_draws_kept_positions_sums_errors_per_layer_and_names_features(tiny_llama, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = training.train(tiny_llama, CORPUS, training.TrainSettings(**SETTINGS), folder=tmp_path / "tc", progress=False)
    g = A.attribution_graph(tiny_llama, ts, TEXT, max_features=40)
    kept = A.prune(g, node_threshold=0.8, edge_threshold=0.98)
    nf = len(g.features)
    feats = [i for i in np.nonzero(kept["nodes"][:nf])[0]]
    top = max(feats, key=lambda i: g.influence[i])
    la, _, f, _ = g.features[top]
    labels = features.feature_labels(tiny_llama, ts, [(la, f)], CORPUS[:6])
    assert labels[(la, f)].startswith(f"L{la} F{f}: ")
    ax = plots.plot_graph(g, kept, labels=labels)
    positions = {g.node_xy(int(i))[0] for i in np.nonzero(kept["nodes"])[0] if not nf <= i < nf + g.n_layers * g.n_tok}
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert len(ticks) == len(positions) + 1 and ticks[-1] == "errors, summed"  # one column per kept position
    diamonds = [c for c in ax.collections if c.get_offsets()[0][0] == len(positions) + 0.5]
    assert 1 <= len(diamonds) <= g.n_layers  # the error nodes of a layer are one marker
    assert any(f"1  {labels[(la, f)]}" in t.get_text() for t in ax.texts)  # numbered, named beside the picture
    assert "1" in [t.get_text() for t in ax.texts]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "edge: raises its target" in legend and "error nodes of a layer, summed" in legend
    share = g.influence[nf:g.token_index(0)].sum() / g.influence.sum()
    assert f"error nodes carry {share:.0%}" in ax.get_title()
    plt.close(ax.figure)


def test_the_skip_is_the_ridge_fit_of_the_first_batches_and_the_features_add_to_it(tiny_llama, tmp_path):
    """The skip fit's batches only gather statistics; the skip is then the ridge regression from mlp_in to
    mlp_out on their tokens (sklearn's, by hand); the features then train on what it leaves. (On a random tiny
    model the skip leaves little but noise; that the features add to it on a real model is chapter 05's check.)"""
    from sklearn.linear_model import Ridge

    st = training.TrainSettings(**SETTINGS, skip_fit=0.3)
    n_batches = -(-len(CORPUS) // st.batch_size)
    tr = training._Trainer(tiny_llama, st, "x", n_batches=n_batches)
    batches = T.text_batches(CORPUS, st.batch_size, st.seed)
    assert tr.skip_batches == -(-3 * n_batches // 10) < n_batches
    xs, ys = {la: [] for la in tr.layers}, {la: [] for la in tr.layers}
    for b in batches[: tr.skip_batches]:
        xin, xout, mask, _ = T.mlp_io(tiny_llama, b, tr.layers)
        keep = T.first_left_out(mask)
        for la in tr.layers:
            xs[la].append(xin[la][keep].float())
            ys[la].append(xout[la][keep].float())
        before = {la: tr.params[la]["W_enc"].clone() for la in tr.layers}
        tr.train_batch(xin, xout, mask)
        assert all(torch.equal(before[la], tr.params[la]["W_enc"]) for la in tr.layers)  # no feature step yet
    d = tiny_llama.d_model
    for la in tr.layers:
        x = torch.cat(xs[la]).double() / tr.scale_in[la]
        y = torch.cat(ys[la]).double() / tr.scale_out[la]
        alpha = st.ridge * d * float(x.pow(2).mean())
        ref = Ridge(alpha=alpha, fit_intercept=True, solver="cholesky").fit(x.numpy(), y.numpy())
        np.testing.assert_allclose(tr.params[la]["W_skip"].numpy(), ref.coef_, atol=2e-4)
        np.testing.assert_allclose(tr.intercept[la].numpy(), ref.intercept_, atol=2e-4)
    tr.train_batch(*T.mlp_io(tiny_llama, batches[tr.skip_batches], tr.layers)[:3])
    assert all(not torch.equal(before[la], tr.params[la]["W_enc"]) for la in tr.layers)  # the features train now
    ts = training.train(tiny_llama, CORPUS, st, folder=tmp_path / "tc", progress=False)
    q = fidelity.quality(tiny_llama, ts, CORPUS[:10])
    for la in ts:
        assert 0 < q[la]["l0"] <= st.k and 0 <= q[la]["dense"] <= 1 - q[la]["dead"]
    with pytest.raises(T.TranscoderError, match="skip_fit"):
        training.train(tiny_llama, CORPUS, training.TrainSettings(skip_fit=1.0), folder=tmp_path / "bad", progress=False)
