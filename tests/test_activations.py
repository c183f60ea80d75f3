"""Sites, pooling and capture, checked against transformers' own outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emocircuits.activations import all_layers, capture, parse_site, pool, Site, SITE_KINDS

TEXTS = ["The weather turned cold overnight and the lake froze.", "My dog died.",
         "Could you help me plan a birthday party for my grandmother next week?"]


def _hidden_states(lm, texts, padding_side):
    enc = lm.encode(texts, padding_side=padding_side)
    with torch.inference_mode():
        hs = lm.hf(**enc, output_hidden_states=True).hidden_states
    return enc["attention_mask"].bool(), hs


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_resid_post_matches_hidden_states(bundled, padding_side):
    lm = bundled
    real, hs = _hidden_states(lm, TEXTS, padding_side)
    assert not real.all(), "the batch must contain padding"
    got = capture(lm, TEXTS, all_layers("resid_post", lm.n_layers), pooling="none",
                  padding_side=padding_side, progress=False)
    for L in range(lm.n_layers - 1):
        for r in range(len(TEXTS)):
            ours = got[f"resid_post.{L}"][r]
            ref = hs[L + 1][r][real[r]]
            assert ours.shape == ref.shape
            assert torch.allclose(ours, ref, atol=1e-4, rtol=0), (L, r, (ours - ref).abs().max())
    # transformers stores the last layer after the final norm
    last = lm.n_layers - 1
    for r in range(len(TEXTS)):
        raw = got[f"resid_post.{last}"][r]
        assert not torch.allclose(raw, hs[-1][r][real[r]], atol=1e-2)
        with torch.inference_mode():
            assert torch.allclose(lm.hf.model.norm(raw), hs[-1][r][real[r]], atol=1e-4)


def _close(a, b, rel=1e-5):
    """Equal up to float32 rounding, judged against the tensor's largest entry.

    The residual stream carries entries of 1e4-1e5 (the first token's), so
    the same sums in a different order differ by more than a fixed 1e-4.
    How much they differ depends on the CPU's kernels: on one 2-core Xeon a
    padded batch and a lone text differ by 2e-6 of the largest entry (1.25e-3
    on 651), so ``rel`` is 1e-5, about 80 float32 steps there. A padding bug
    is far larger: letting the pads into attention moves the layer-3 residual
    of these texts by up to 638 (checked by hand on smollm2-135m).
    """
    return (a - b).abs().max().item() <= rel * b.abs().max().item() + 1e-4


def test_padding_does_not_change_activations(bundled):
    lm = bundled
    batched = capture(lm, TEXTS, ["resid_post.3", "mlp_act.5"], pooling="none", progress=False)
    for i, text in enumerate(TEXTS):
        alone = capture(lm, [text], ["resid_post.3", "mlp_act.5"], pooling="none", progress=False)
        for site in alone:
            assert _close(batched[site][i], alone[site][0]), (site, i)


def test_sites_add_up_to_the_residual_stream(bundled):
    """resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out, for both layouts."""
    lm = bundled
    L = lm.n_layers // 2
    sites = [f"resid_post.{L - 1}"] + [f"{k}.{L}" for k in SITE_KINDS]
    got = capture(lm, TEXTS, sites, pooling="none", progress=False)
    w_down = lm.hf_layer(L).mlp.down_proj.weight
    w_o = lm.hf_layer(L).self_attn.o_proj.weight
    for r in range(len(TEXTS)):
        g = {k: got[f"{k}.{L}"][r] for k in SITE_KINDS}
        assert torch.allclose(g["resid_pre"] + g["attn_out"], g["resid_mid"], atol=1e-3)
        assert torch.allclose(g["resid_mid"] + g["mlp_out"], g["resid_post"], atol=1e-3)
        assert torch.equal(got[f"resid_post.{L - 1}"][r], g["resid_pre"])
        with torch.inference_mode():
            mlp_raw = g["mlp_act"] @ w_down.T
            attn_raw = g["attn_z"] @ w_o.T
        assert g["mlp_act"].shape[-1] == lm.d_mlp and g["attn_z"].shape[-1] == lm.n_heads * lm.head_dim
        if lm.arch == "llama":
            assert torch.allclose(mlp_raw, g["mlp_out"], atol=1e-3)
            assert torch.allclose(attn_raw, g["attn_out"], atol=1e-3)
        else:  # Gemma normalises each sublayer's output before the residual add
            with torch.inference_mode():
                assert torch.allclose(lm.hf_layer(L).post_feedforward_layernorm(mlp_raw), g["mlp_out"], atol=1e-3)
                assert torch.allclose(lm.hf_layer(L).post_attention_layernorm(attn_raw), g["attn_out"], atol=1e-3)


def test_pooling_modes(smol):
    lm = smol
    full = capture(lm, TEXTS, ["resid_post.4", "attn_z.4"], pooling="none", progress=False)
    last = capture(lm, TEXTS, ["resid_post.4", "attn_z.4"], pooling="last_prompt_token", progress=False)
    right = capture(lm, TEXTS, ["resid_post.4"], pooling="last_prompt_token", padding_side="right", progress=False)
    mean = capture(lm, TEXTS, ["resid_post.4"], pooling="mean_all", progress=False)
    assert last["attn_z.4"].shape == (3, lm.n_heads, lm.head_dim)
    for i in range(3):
        x = full["resid_post.4"][i]
        assert torch.allclose(last["resid_post.4"][i], x[-1], atol=1e-5)
        assert torch.allclose(right["resid_post.4"][i], x[-1], atol=1e-4)
        assert torch.allclose(mean["resid_post.4"][i], x.mean(0), atol=1e-4)
        assert torch.allclose(last["attn_z.4"][i].flatten(), full["attn_z.4"][i][-1], atol=1e-5)


def test_mean_response_averages_only_the_response(smol):
    lm = smol
    prompts = ["Situation: my dog died.\nReply: ", "Situation: I lost my job today.\nReply: "]
    replies = ["I am so sorry, that is heartbreaking.", "Update your CV and apply to three jobs."]
    texts = [p + r for p, r in zip(prompts, replies)]
    starts = [len(p) for p in prompts]
    resp = capture(lm, texts, ["resid_post.6"], pooling="mean_response", response_starts=starts, progress=False)
    full = capture(lm, texts, ["resid_post.6"], pooling="none", progress=False)
    enc = lm.tokenizer(texts, return_offsets_mapping=True)
    for i in range(2):
        offs = enc["offset_mapping"][i]
        keep = torch.tensor([s >= starts[i] and e > s for s, e in offs])
        assert 0 < keep.sum() < len(offs)
        assert torch.allclose(resp["resid_post.6"][i], full["resid_post.6"][i][keep].mean(0), atol=1e-4)


def test_pool_rejects_unknown_mode():
    x, m = torch.zeros(1, 2, 3), torch.ones(1, 2)
    with pytest.raises(ValueError, match="pooling='max'.*last_prompt_token"):
        pool(x, m, "max")


def test_capture_cache_is_reused_and_atomic(smol, tmp_path, monkeypatch):
    monkeypatch.setenv("EMOCIRCUITS_CACHE", str(tmp_path))
    a = capture(smol, TEXTS, ["resid_post.2", "mlp_act.2"], cache=True, progress=False)
    files = list(Path(tmp_path, "activations").iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temporary file left behind
    b = capture(smol, TEXTS, ["resid_post.2", "mlp_act.2"], cache=True, progress=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    files[0].write_bytes(b"")  # prove the second call read the file: corrupt it and reread
    with pytest.raises(Exception):
        capture(smol, TEXTS, ["resid_post.2", "mlp_act.2"], cache=True, progress=False)
    c = capture(smol, TEXTS[:2], ["resid_post.2", "mlp_act.2"], cache=True, progress=False)  # new key
    assert torch.allclose(c["resid_post.2"], a["resid_post.2"][:2], atol=1e-5)
    # a cached capture gives its sites in the order a fresh one does (forward order, not the file's sorted names):
    # a chapter that draws one seeded random vector per site in turn gets the same draws either way
    sites = ["resid_post.10", "resid_post.2"]
    fresh, cached = (capture(smol, TEXTS, sites, cache=True, progress=False) for _ in range(2))
    assert list(fresh) == list(cached) == ["resid_post.2", "resid_post.10"]


def test_results_come_back_in_input_order(smol):
    texts = ["a much longer sentence than the others here", "short", "medium length one"]
    got = capture(smol, texts, ["resid_post.1"], batch_size=2, progress=False)
    for i, t in enumerate(texts):
        alone = capture(smol, [t], ["resid_post.1"], progress=False)
        assert _close(got["resid_post.1"][i], alone["resid_post.1"][0])


@pytest.mark.parametrize("bad,match", [
    ("resid_post", "is not '<kind>.<layer>'"), ("resid_posts.3", "kind one of resid_pre"),
    ("resid_post.30", r"expected 0\.\.29"), ("mlp_act.x", "is not"),
])
def test_bad_sites_name_the_input(smol, bad, match):
    with pytest.raises(ValueError, match=match):
        capture(smol, ["hi"], [bad], progress=False)


def test_bad_capture_inputs(smol):
    with pytest.raises(TypeError, match="list of str"):
        capture(smol, "one string", ["resid_post.1"])
    with pytest.raises(ValueError, match="non-empty"):
        capture(smol, ["ok", ""], ["resid_post.1"])
    with pytest.raises(ValueError, match="pooling='avg'"):
        capture(smol, ["ok"], ["resid_post.1"], pooling="avg")
    with pytest.raises(ValueError, match="needs response_starts"):
        capture(smol, ["ok"], ["resid_post.1"], pooling="mean_response")
    with pytest.raises(ValueError, match="no tokens after"):
        capture(smol, ["ok"], ["resid_post.1"], pooling="mean_response", response_starts=[50])
    with pytest.raises(ValueError, match="duplicates"):
        capture(smol, ["ok"], ["resid_post.1", "resid_post.1"])
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="batch_size="):
            capture(smol, ["ok"], ["resid_post.1"], batch_size=bad)


def test_parse_site_negative_layers_and_str():
    assert parse_site("resid_post.-1", 30) == Site("resid_post", 29)
    assert str(parse_site("attn_z.3")) == "attn_z.3"


def test_several_poolings_from_one_pass_equal_separate_captures(smol, tmp_path, monkeypatch):
    texts = ["Hi. I am sorry to hear that.", "Hello there. That sounds hard, tell me more."]
    starts = [4, 13]
    pools = ("mean_all", "last_prompt_token", "mean_response")
    sites = ["resid_post.2", "mlp_act.4"]
    both = capture(smol, texts, sites, pooling=pools, response_starts=starts, progress=False)
    assert list(both) == list(pools)
    for p in pools:
        one = capture(smol, texts, sites, pooling=p, response_starts=starts, progress=False)
        for s in sites:
            torch.testing.assert_close(both[p][s], one[s], rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("EMOCIRCUITS_CACHE", str(tmp_path))
    first = capture(smol, texts, sites, pooling=pools, response_starts=starts, progress=False, cache=True)
    again = capture(smol, texts, sites, pooling=pools, response_starts=starts, progress=False, cache=True)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    for p in pools:
        for s in sites:
            torch.testing.assert_close(first[p][s], again[p][s])
    with pytest.raises(ValueError, match="or a tuple of"):
        capture(smol, texts, sites, pooling=("mean_all", "none"), progress=False)


def test_memory_cache_runs_only_unseen_texts_and_gives_fresh_values(tiny_llama, monkeypatch):
    """cache="memory": a second call runs only the texts (or sites) it has not kept; the rows it returns
    equal a fresh capture's, in the caller's order; the least recently used texts go first past the
    size limit."""
    from emocircuits import activations as A

    lm, sites = tiny_llama, ["resid_post.0", "attn_z.1"]
    ran = []
    real = A._run_batch
    monkeypatch.setattr(A, "_run_batch", lambda lm_, enc, *a, **k: ran.append(enc["input_ids"].shape[0])
                        or real(lm_, enc, *a, **k))
    A.forget_captures(lm)
    first = capture(lm, TEXTS[:2], sites, pooling=("mean_all", "last_prompt_token"), cache="memory",
                    progress=False)
    assert sum(ran) == 2
    texts = [TEXTS[2], TEXTS[0], TEXTS[2]]  # one new text, asked twice; one kept
    got = capture(lm, texts, sites, pooling="mean_all", cache="memory", progress=False)
    assert sum(ran) == 3  # only the new text ran, once
    fresh = capture(lm, texts, sites, pooling="mean_all", progress=False)
    assert list(got) == list(fresh) == sites
    for s in sites:
        torch.testing.assert_close(got[s], fresh[s], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[s][1], first["mean_all"][s][0])
    assert got["attn_z.1"].shape == (3, lm.n_heads, lm.head_dim)
    before = sum(ran)
    capture(lm, TEXTS, ["resid_post.0", "resid_post.1"], pooling="mean_all", cache="memory", progress=False)
    assert sum(ran) == before + 3  # a site not kept runs the texts again
    memo = lm._captured
    monkeypatch.setattr(A, "MEMORY_CACHE_BYTES", memo.nbytes // 2)
    capture(lm, TEXTS[:1], ["resid_post.0"], pooling="mean_all", cache="memory", progress=False)
    assert 0 < memo.nbytes <= A.MEMORY_CACHE_BYTES
    assert memo.nbytes == sum(v.numel() * v.element_size() for row in memo.rows.values() for v in row.values())
    assert next(reversed(memo.rows))[0] == TEXTS[0]  # the text just read is the newest, so it stays
    A.forget_captures(lm)
    before = sum(ran)
    capture(lm, TEXTS[:1], ["resid_post.0"], pooling="mean_all", cache="memory", progress=False)
    assert sum(ran) == before + 1
    with pytest.raises(ValueError, match="cache='memory' is supported for pooled captures only"):
        capture(lm, TEXTS, sites, pooling="none", cache="memory", progress=False)
    with pytest.raises(ValueError, match="cache='disk': expected False, True"):
        capture(lm, TEXTS, sites, cache="disk", progress=False)
    from emocircuits.interventions import Add

    with pytest.raises(ValueError, match="cache='memory' is not supported with interventions"):
        capture(lm, TEXTS, sites, cache="memory", progress=False,
                interventions=[Add("resid_post.0", torch.zeros(lm.d_model))])


def test_memory_cache_keeps_each_response_start_apart(tiny_llama):
    """mean_response rows are kept per response start (one text, two starts: two rows, each as a fresh capture
    gives it); the other poolings ignore the start; an unusable start is named by the caller's position."""
    from emocircuits import activations as A

    lm, site = tiny_llama, "resid_post.1"
    text = "Hello there. That sounds hard, tell me more."
    A.forget_captures(lm)
    pools = ("mean_response", "mean_all")
    got = capture(lm, [text, text], [site], pooling=pools, response_starts=[6, 13], cache="memory", progress=False)
    for i, start in enumerate([6, 13]):
        fresh = capture(lm, [text], [site], pooling=pools, response_starts=[start], progress=False)
        for p in pools:
            torch.testing.assert_close(got[p][site][i], fresh[p][site][0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got["mean_response"][site][0], got["mean_response"][site][1])
    torch.testing.assert_close(got["mean_all"][site][0], got["mean_all"][site][1])
    with pytest.raises(ValueError, match=r"texts \[2\] have no tokens after their response_starts"):
        capture(lm, [text, "Hi.", "Hi."], [site], pooling="mean_response", response_starts=[6, 1, 50],
                cache="memory", progress=False)


def test_a_neuron_token_view_shows_words_on_their_own_scale(smol):
    """Special tokens are shown at 0 and the words' values clipped to their own 1st-99th percentile, so a
    chat marker's activation of hundreds does not set the colour scale; unclipped, a word keeps its value."""
    from emocircuits.plots import neuron_token_values, neuron_view

    texts = [smol.chat_prompt("My dog died today.") + "I'm so sorry, that is heartbreaking.",
             smol.chat_prompt("I got the job!") + "Congratulations, that's wonderful news!"]
    neurons = [(3, 7), (20, 100)]
    raw_tokens, raw = neuron_token_values(smol, texts, neurons, clip_quantile=0.0)
    tokens, clipped = neuron_token_values(smol, texts, neurons)
    assert tokens == raw_tokens and clipped.shape == (len(tokens), 2)
    first = capture(smol, texts[:1], ["mlp_act.20"], pooling="none", progress=False)["mlp_act.20"][0][:, 100]
    special = [t in ("<|im_start|>", "<|im_end|>") for t in tokens]
    assert sum(special) >= 4 and all(raw[i].abs().sum() == 0 for i, s in enumerate(special) if s)
    words = [i for i, t in enumerate(tokens[: len(first)]) if not special[i]]
    assert torch.allclose(raw[words, 1], first[words].float(), atol=1e-5)
    ordinary = torch.tensor([not s and t != "\n\n" for s, t in zip(special, tokens)])
    for k in range(2):
        lo, hi = torch.quantile(raw[ordinary, k], 0.01), torch.quantile(raw[ordinary, k], 0.99)
        assert clipped[ordinary, k].min() >= lo - 1e-6 and clipped[ordinary, k].max() <= hi + 1e-6
        assert clipped[ordinary, k].max() == pytest.approx(float(hi))
    assert 'id="circuits-vis-' in neuron_view(smol, texts, neurons).data
    with pytest.raises(ValueError, match="neurons must be"):
        neuron_token_values(smol, texts, [3])
    with pytest.raises(ValueError, match="clip_quantile"):
        neuron_token_values(smol, texts, neurons, clip_quantile=0.7)
