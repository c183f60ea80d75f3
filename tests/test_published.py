"""Transcoder sets in circuit-tracer's format: per-layer and cross-layer, every input hook, and what the
chapter does with them (splice, clamp, attribution graph)."""

from __future__ import annotations

import copy

import pytest
import torch

from emocircuits import attribution as A
from emocircuits import fidelity
from emocircuits import published as P
from emocircuits import training
from emocircuits import transcoders as T
from emocircuits.activations import capture
from emocircuits.interventions import Transcode

from testkit import CORPUS, write_tiny_set

TEXT = CORPUS[0] + " " + CORPUS[1]


def _jumprelu(x, W_enc, b_enc, thr):
    pre = x @ W_enc.T + b_enc
    return pre * (pre > thr)


def _inputs(lm, site):
    sites = [f"{site}.{la}" for la in range(lm.n_layers)] + [f"mlp_out.{la}" for la in range(lm.n_layers)]
    got = capture(lm, [TEXT], sites, pooling="none", progress=False)
    return ({la: got[f"{site}.{la}"][0][1:] for la in range(lm.n_layers)},
            {la: got[f"mlp_out.{la}"][0][1:] for la in range(lm.n_layers)})


@pytest.fixture
def trained(tiny_llama, tmp_path):
    st = training.TrainSettings(n_features=96, k=8, epochs=2, batch_size=8, skip=True)
    tset = training.train(tiny_llama, CORPUS, st, folder=tmp_path / "ours", progress=False)
    for tc in tset.values():  # circuit-tracer's TopK keeps signs; ours take the ReLU
        tc.cfg.topk_relu = False
    return tset


def test_our_set_written_in_circuit_tracer_format_loads_back_exactly(tiny_llama, trained, tmp_path):
    folder = P.save_set(trained, tmp_path / "ct")
    cfg = P.read_config((folder / "config.yaml").read_text())
    assert cfg["model_kind"] == "transcoder_set" and cfg["activation"] == "topk" and cfg["k"] == 8
    loaded = P.load_set(tiny_llama, folder)
    assert sorted(loaded) == sorted(trained) and loaded.input_site == "mlp_in"
    xs, ys = _inputs(tiny_llama, "mlp_in")
    for la, tc in loaded.items():
        assert tc.cfg.activation == "topk" and tc.cfg.skip and not tc.cfg.topk_relu
        torch.testing.assert_close(tc(xs[la]), trained[la](xs[la]))
    q_ours = fidelity.quality(tiny_llama, trained, CORPUS[:10])
    q_loaded = fidelity.quality(tiny_llama, loaded, CORPUS[:10])
    for la in trained:  # the loaded set reproduces the MLP outputs exactly as well as the set it was written from
        assert q_loaded[la]["fve"] == pytest.approx(q_ours[la]["fve"], abs=1e-5)
        assert q_ours[la]["fve"] > 0.15  # trained: it explains part of the MLP (a random set explains none)
    assert not list(folder.glob(".*tmp"))
    ours_relu = copy.deepcopy(trained)
    ours_relu[0].cfg.topk_relu = True
    with pytest.raises(T.TranscoderError, match="keeps the signs"):
        P.save_set(ours_relu, tmp_path / "refused")


def test_normalised_input_hook_is_folded_into_the_encoder(tiny_gemma, tmp_path):
    """GemmaScope's ``ln2.hook_normalized`` reads the MLP input before the norm's weight (Gemma: 1 + w)."""
    plain = write_tiny_set(tmp_path / "plain", tiny_gemma)
    normed = write_tiny_set(tmp_path / "normed", tiny_gemma, input_hook="ln2.hook_normalized")
    a, b = P.load_set(tiny_gemma, plain), P.load_set(tiny_gemma, normed)
    xs, _ = _inputs(tiny_gemma, "mlp_in")
    for la in range(tiny_gemma.n_layers):
        gain = 1.0 + tiny_gemma.hf_part(la, "pre_feedforward_layernorm").weight.detach().float()
        # the file's transcoder applied to the normalised input, by hand
        torch.testing.assert_close(b[la](xs[la]), a[la](xs[la] / gain), rtol=1e-4, atol=1e-5)
        assert b[la].cfg.input_site == "mlp_in"


def test_cross_layer_set_reconstructs_splices_and_clamps_as_written(tiny_llama, tmp_path):
    folder = write_tiny_set(tmp_path / "clt", tiny_llama, kind="cross_layer_transcoder", input_hook="hook_resid_mid")
    clt = P.load_set(tiny_llama, folder)
    L = tiny_llama.n_layers
    assert clt.cross_layer and clt.input_site == "resid_mid" and [clt[la].cfg.reach for la in range(L)] == [3, 2, 1]
    xs, ys = _inputs(tiny_llama, "resid_mid")
    from safetensors.torch import load_file

    raw = {la: {**load_file(str(folder / f"W_enc_{la}.safetensors")), **load_file(str(folder / f"W_dec_{la}.safetensors"))}
           for la in range(L)}
    f = {la: _jumprelu(xs[la], raw[la][f"W_enc_{la}"], raw[la][f"b_enc_{la}"], raw[la][f"threshold_{la}"])
         for la in range(L)}
    assert all(bool((f[la] > 0).any()) for la in range(L))
    for m in range(L):  # by hand: every layer at or below m writes into m through its decoder slice
        expect = raw[m][f"b_dec_{m}"] + sum(f[la] @ raw[la][f"W_dec_{la}"][:, m - la] for la in range(m + 1))
        torch.testing.assert_close(clt.reconstruct(m, f, xs[m]), expect, rtol=1e-4, atol=1e-5)
    # splicing layer 2 alone: its prediction from the real inputs of layers 0..2
    splices = clt.splices()
    assert [len(s.feeds) for s in splices] == [0, 1, 2]
    got = capture(tiny_llama, [TEXT], ["mlp_out.2"], pooling="none", progress=False, interventions=[splices[2]])
    torch.testing.assert_close(got["mlp_out.2"][0][1:], clt.reconstruct(2, f, xs[2]), rtol=1e-4, atol=1e-4)
    # a clamp at layer 0 writes into layers 1 and 2 too; with its own-layer decoder row zeroed, layer 1's MLP
    # sees the clean input and its output moves by exactly (value - f) times the feature's decoder into layer 1
    feat = int(f[0].abs().sum(0).argmax())
    quiet = copy.deepcopy(clt)
    with torch.no_grad():
        quiet[0].W_dec[feat] = 0.0
    got = capture(tiny_llama, [TEXT], ["mlp_out.0", "mlp_out.1"], pooling="none", progress=False,
                  interventions=[Transcode(quiet[0], clamp={feat: 3.0})])
    torch.testing.assert_close(got["mlp_out.0"][0][1:], ys[0], rtol=1e-4, atol=1e-5)
    moved = (3.0 - f[0][:, feat])[:, None] * raw[0]["W_dec_0"][feat, 1]
    torch.testing.assert_close(got["mlp_out.1"][0][1:], ys[1] + moved, rtol=1e-4, atol=1e-4)
    losses = fidelity.splice_losses(tiny_llama, clt, CORPUS[:4], batch_size=4)
    assert set(losses["each"]) == set(range(L)) and losses["all"] > 0


@pytest.mark.parametrize("kind", ["transcoder_set", "cross_layer_transcoder", "gemma_scope_2_clt"])
@pytest.mark.parametrize("hook", ["mlp.hook_in", "hook_resid_mid"])
def test_attribution_graph_is_exact_with_published_sets(tiny_gemma, tmp_path, kind, hook):
    tset = P.load_set(tiny_gemma, write_tiny_set(tmp_path / "set", tiny_gemma, kind=kind, input_hook=hook))
    ctx = A.prepare(tiny_gemma, tset, TEXT)
    pres, z, _ = A.linear_forward(ctx, ctx.emb, ctx.act, ctx.err)
    torch.testing.assert_close(z @ A._weights(ctx)["W_U"].T, ctx.logits, rtol=1e-4, atol=1e-4)
    for pre, act in zip(pres, ctx.act):
        torch.testing.assert_close(pre, act, rtol=1e-4, atol=1e-5)
    g = A.attribution_graph(tiny_gemma, tset, TEXT, max_features=20, ctx=ctx)
    assert g.check["max_rel_error"] < 1e-3 and g.check["logit_vs_model"] < 1e-3
    if kind != "transcoder_set":  # a layer-0 feature reaches the logit through decoders into later layers
        assert tset.cross_layer and any(la == 0 for la, *_ in g.features)
    if kind == "gemma_scope_2_clt":  # its skip, applied as x @ A, and its decoders from the layer on
        from safetensors.torch import load_file

        raw = load_file(str(tmp_path / "set" / "params_1.safetensors"))
        x = torch.randn(3, tiny_gemma.d_model)
        torch.testing.assert_close(tset[1].skip_term(x), x @ raw["affine_skip_connection"])
        torch.testing.assert_close(tset[1].decoder(2), raw["w_dec"][:, 2])


def test_bad_sets_are_named(tiny_llama, tiny_gemma, tmp_path):
    folder = write_tiny_set(tmp_path / "s", tiny_llama)
    base = {"model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in", "feature_output_hook": "hook_mlp_out"}
    for field, value, match in (("model_kind", "sae", "model_kind"), ("feature_input_hook", "blocks.0.hook_x", "input"),
                                ("feature_output_hook", "hook_attn_out", "output"), ("activation", "topk", "integer k"),
                                ("transcoders", "[]", "non-empty list")):
        with pytest.raises(T.TranscoderError, match=match):
            P.read_config("\n".join(f"{k}: {v}" for k, v in {**base, field: value}.items()))
    with pytest.raises(T.TranscoderError, match="expected a local folder"):
        P.load_set(tiny_llama, "not-a-folder")
    with pytest.raises(T.TranscoderError, match="layers \\[7\\]"):
        P.load_set(tiny_llama, folder, layers=[7])
    (folder / "layer_1.safetensors").unlink()
    with pytest.raises(T.TranscoderError, match="no file 'layer_1.safetensors'"):
        P.load_set(tiny_llama, folder)
    gem = write_tiny_set(tmp_path / "g", tiny_gemma)
    (gem / "config.yaml").write_text((gem / "config.yaml").read_text().replace("hook_mlp_out", "mlp.hook_out"))
    with pytest.raises(T.TranscoderError, match="post-MLP norm"):
        P.load_set(tiny_gemma, gem)
    small = write_tiny_set(tmp_path / "w", tiny_llama, kind="cross_layer_transcoder")
    with pytest.raises(T.TranscoderError, match="loads whole"):
        P.load_set(tiny_llama, small, layers=[0])


def test_a_hub_set_downloads_what_its_config_names(tiny_llama, tmp_path, monkeypatch):
    folder = write_tiny_set(tmp_path / "hub", tiny_llama)
    (folder / "config.yaml").write_text((folder / "config.yaml").read_text().replace(
        "- layer_0.safetensors", "- hf://someone/other/layer_0.safetensors?revision=r2"))
    seen = []

    def fake_download(repo, filename, revision=None):
        seen.append((repo, filename, revision))
        return str(folder / filename.split("/")[-1])

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    got = P.load_set(tiny_llama, "someone/set/sub@v1")
    assert seen[0] == ("someone/set", "sub/config.yaml", "v1")
    assert ("someone/other", "layer_0.safetensors", "r2") in seen and ("someone/set", "sub/layer_2.safetensors", "v1") in seen
    torch.testing.assert_close(got[2].W_enc, P.load_set(tiny_llama, folder)[2].W_enc)
