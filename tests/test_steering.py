"""Interventions: no-ops are exact, additions match a hand-run forward, positions are respected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emocircuits.activations import capture
from emocircuits.generation import Decoding, _strip_after_eos, forward, generate, generate_grid, next_token_logits
from emocircuits.interventions import Add, Scale, Set
from emocircuits.steering import sweep

from testkit import hand_run_from

PROMPTS = ["My dog died this morning.", "Can you recommend a book about the sea?", "I got the job!"]


def test_alpha_zero_equals_plain_generation_token_for_token(bundled):
    lm = bundled
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    plain = generate(lm, PROMPTS, max_new_tokens=12, return_ids=True)
    for positions in ["all", "last:1", "generated"]:
        steered = generate(lm, PROMPTS, [Add("resid_post.3", v, alpha=0.0, positions=positions)],
                           max_new_tokens=12, return_ids=True)
        assert steered == plain, positions
    assert all(len(ids) > 0 for ids in plain)


def test_alpha_zero_equals_plain_sampling_with_a_seed(smol):
    v = torch.ones(smol.d_model)
    kw = dict(max_new_tokens=20, do_sample=True, temperature=0.8, seed=3, return_ids=True)
    plain = generate(smol, PROMPTS, **kw)
    assert plain == generate(smol, PROMPTS, **kw)  # seeded reruns are identical
    assert plain == generate(smol, PROMPTS, [Add("resid_post.5", v, alpha=0.0)], **kw)
    assert plain != generate(smol, PROMPTS, **{**kw, "seed": 4})


def test_a_sampled_reply_depends_on_its_row_not_on_the_batch(smol):
    kw = dict(max_new_tokens=16, do_sample=True, temperature=1.0, seed=5, return_ids=True)
    together = generate(smol, PROMPTS + [PROMPTS[0]], batch_size=4, **kw)
    alone = [generate(smol, [p], batch_size=1, **kw)[0] for p in PROMPTS]
    assert together[:3] == alone  # batch size and neighbours do not change a row's reply
    assert together[3] != together[0]  # a repeated prompt is a new draw, not a copy
    with pytest.raises(ValueError, match="top_p=0"):
        generate(smol, PROMPTS, do_sample=True, top_p=0)
    # a push too weak to flip any token choice gives the unpushed reply: rows of a grid share random numbers
    v = torch.randn(smol.d_model, generator=torch.Generator().manual_seed(0))
    grid = generate_grid(smol, PROMPTS, [[], [Add("resid_post.10", v, alpha=1e-4)], [Add("resid_post.10", v, 60.0)]],
                         **kw)
    assert grid[0] == alone and grid[1] == alone and grid[2] != alone


def test_row_sampler_draws_from_the_softmax_and_respects_top_p():
    from emocircuits.generation import _RowSampler

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -30.0])
    n = 4000
    rows = logits.expand(n, -1)
    picks = _RowSampler(range(n), temperature=1.0)(None, rows).argmax(-1)
    freq = torch.bincount(picks, minlength=5).double() / n
    assert torch.allclose(freq, logits.double().softmax(-1), atol=0.025)
    hot = _RowSampler(range(n), temperature=4.0)(None, rows).argmax(-1)  # flatter at a higher temperature
    assert torch.allclose(torch.bincount(hot, minlength=5).double() / n, (logits / 4).double().softmax(-1),
                          atol=0.025)
    nucleus = _RowSampler(range(n), temperature=1.0, top_p=0.8)(None, rows).argmax(-1)
    assert set(nucleus.tolist()) == {0, 1}  # p = 0.64, 0.24: the first two reach 0.8


def test_adding_v_at_resid_post_matches_running_the_rest_by_hand(bundled):
    lm = bundled
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1)) * 5
    layer = lm.n_layers // 3
    text = "I just heard that my best friend is moving away."
    ours = forward(lm, [text], [Add(f"resid_post.{layer}", v, alpha=2.0)])[0]
    ref = hand_run_from(lm, text, layer, 2.0 * v)[0]
    plain = forward(lm, [text])[0]
    assert (ours - plain).abs().max() > 1.0  # the intervention matters
    assert torch.allclose(ours, ref, atol=1e-3, rtol=1e-4), (ours - ref).abs().max()


def test_set_neuron_to_zero_removes_its_write(smol):
    """Zeroing neuron i of mlp_act changes mlp_out by exactly -a_i * W_down[:, i]."""
    L, i = 6, 17
    text = ["The storm destroyed our garden."]
    base = capture(smol, text, [f"mlp_act.{L}", f"mlp_out.{L}"], pooling="none", progress=False)
    a_i = base[f"mlp_act.{L}"][0][:, i]
    got = {}
    from emocircuits.interventions import _apply, resolve

    with torch.inference_mode(), smol.nn.trace(smol.encode(text)):
        for site, iv in resolve(smol, [Set(f"mlp_act.{L}", [i], 0.0)]):
            _apply(smol, site, iv, 0)
        got["out"] = smol.mlp(L).output
    expected = base[f"mlp_out.{L}"][0] - a_i[:, None] * smol.hf_layer(L).mlp.down_proj.weight[:, i].detach()[None]
    assert torch.allclose(got["out"][0], expected, atol=1e-4)


def test_set_head_ablation_changes_only_later_computation(smol):
    L = 4
    plain = forward(smol, PROMPTS[:1])
    ablated = forward(smol, PROMPTS[:1], [Set(f"attn_z.{L}", [0, 1, 2], 0.0)])
    assert (plain - ablated).abs().max() > 1e-2
    all_heads = forward(smol, PROMPTS[:1], [Set(f"attn_z.{L}", list(range(smol.n_heads)), 0.0)])
    no_attn = forward(smol, PROMPTS[:1], [Set(f"attn_out.{L}", list(range(smol.d_model)), 0.0)])
    assert torch.allclose(all_heads, no_attn, atol=1e-3)  # zero every head == zero the attention output


def test_positions_control_where_the_vector_goes(smol):
    """'prompt' changes the first new token's logits; 'generated' leaves them alone."""
    v = torch.randn(smol.d_model, generator=torch.Generator().manual_seed(2)) * 40
    plain = generate(smol, PROMPTS[:2], max_new_tokens=8, return_ids=True)
    gen_only = generate(smol, PROMPTS[:2], [Add("resid_post.8", v, positions="generated")], max_new_tokens=8,
                        return_ids=True)
    prompt_only = generate(smol, PROMPTS[:2], [Add("resid_post.8", v, positions="prompt")], max_new_tokens=8,
                           return_ids=True)
    every = generate(smol, PROMPTS[:2], [Add("resid_post.8", v, positions="all")], max_new_tokens=8,
                     return_ids=True)
    for r in range(2):
        assert gen_only[r][0] == plain[r][0]  # first token comes from the unsteered prompt
        assert gen_only[r] != plain[r]
    assert prompt_only != plain and every != plain


def test_last_k_positions_in_a_forward(smol):
    v = torch.randn(smol.d_model, generator=torch.Generator().manual_seed(3)) * 40
    text = ["A long enough sentence to have several tokens in it."]
    plain = forward(smol, text)[0]
    last2 = forward(smol, text, [Add("resid_post.5", v, positions="last:2")])[0]
    assert torch.allclose(plain[:-2], last2[:-2], atol=1e-4)  # causal: earlier positions untouched
    assert (plain[-2:] - last2[-2:]).abs().max() > 1.0


def test_each_prompt_its_own_interventions_in_one_batch_matches_one_call_per_setting(bundled):
    """Rows with different interventions share a batch: each row's tokens are
    exactly those of a run where every row had that row's interventions."""
    lm = bundled
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(2))
    a = [Add(f"resid_post.{lm.n_layers // 3}", v, alpha=8.0, positions="last:1")]
    b = [Set(f"mlp_act.{lm.n_layers // 2}", list(range(40)), 0.0), Scale(f"attn_z.{lm.n_layers // 2}", [0, 1], 3.0)]
    settings = [a, b, []]
    prompts = PROMPTS * 2
    each = [settings[i % 3] for i in range(len(prompts))]
    kw = dict(max_new_tokens=6, return_ids=True, batch_size=len(prompts))
    got = generate(lm, prompts, interventions_each=each, **kw)
    for k, ivs in enumerate(settings):
        alone = generate(lm, prompts, ivs, **kw)
        rows = [i for i in range(len(prompts)) if i % 3 == k]
        assert [got[i] for i in rows] == [alone[i] for i in rows], f"setting {k}"
    plain = generate(lm, prompts, **kw)
    assert got[0] != plain[0] and got[1] != plain[1], "each setting changed its rows"
    assert generate(lm, prompts, interventions_each=[[]] * len(prompts), **kw) == generate(lm, prompts, **kw)
    with pytest.raises(ValueError, match="one list of interventions per prompt"):
        generate(lm, prompts, interventions_each=[a])
    with pytest.raises(ValueError, match="not both"):
        generate(lm, prompts, a, interventions_each=each)
    # the grid form: [setting][prompt], each setting's rows exactly as in a call where every row had it
    systems = ["Be kind.", None, "Be brief."]
    kw = dict(max_new_tokens=6, return_ids=True, batch_size=9)
    grid = generate_grid(lm, PROMPTS, settings, system=systems, **kw)
    assert [len(g) for g in grid] == [len(PROMPTS)] * len(settings)
    for k, ivs in enumerate(settings):
        alone = generate(lm, PROMPTS * len(settings), ivs, system=systems * len(settings), **kw)
        assert grid[k] == alone[k * len(PROMPTS):(k + 1) * len(PROMPTS)], f"setting {k}"
    with pytest.raises(ValueError, match="settings is empty"):
        generate_grid(lm, PROMPTS, [])


def test_repetition_penalty_is_ctrls_rule_on_every_path(smol):
    """The penalty reaches decoding, plain and traced alike, and is CTRL's rule:
    a token already in the row (prompt included) has its logit divided by the
    penalty when positive, multiplied when negative, before the greedy pick."""
    lm, pen, n_new = smol, 1.3, 12
    text = lm.chat_prompt("Tell me about the sea, the sea, the sea.")
    ids = lm.encode([text])["input_ids"]
    with torch.inference_mode():
        for _ in range(n_new):
            logits = lm.hf(input_ids=ids).logits[0, -1].clone()
            seen = torch.unique(ids[0])
            logits[seen] = torch.where(logits[seen] > 0, logits[seen] / pen, logits[seen] * pen)
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    by_hand = ids[0, -n_new:].tolist()
    kw = dict(max_new_tokens=n_new, return_ids=True, chat=False, repetition_penalty=pen)
    plain = generate(lm, [text], **kw)[0]
    traced = generate(lm, [text], [Add("resid_post.3", torch.ones(lm.d_model), alpha=0.0)], **kw)[0]
    assert plain == by_hand and traced == by_hand
    assert generate(lm, [text], **{**kw, "repetition_penalty": 1.0})[0] != by_hand  # it changed the reply
    for bad in (0, -1.2, float("nan"), True, "1.2"):
        with pytest.raises(ValueError, match="repetition_penalty="):
            generate(lm, ["hi"], repetition_penalty=bad)


def test_no_repeat_ngram_blocks_every_repeated_ngram_on_every_path(smol):
    """With ``no_repeat_ngram_size=n`` a token that would complete an n-gram
    already in the row (prompt included) is never picked: greedy decoding by
    hand with that ban gives the same tokens, plain and traced alike."""
    lm, n, n_new = smol, 3, 16
    text = lm.chat_prompt("Say it again and again: the sea, the sea, the sea.")
    ids = lm.encode([text])["input_ids"][0].tolist()
    with torch.inference_mode():
        for _ in range(n_new):
            logits = lm.hf(input_ids=torch.tensor([ids])).logits[0, -1].clone()
            tail = ids[len(ids) - n + 1:]
            banned = {ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i:i + n - 1] == tail}
            logits[list(banned)] = float("-inf")
            ids.append(int(logits.argmax()))
    by_hand = _strip_after_eos(ids[-n_new:], lm)  # generate stops at the end of the reply
    assert len(by_hand) >= 6
    kw = dict(max_new_tokens=n_new, return_ids=True, chat=False, no_repeat_ngram_size=n)
    plain = generate(lm, [text], **kw)[0]
    traced = generate(lm, [text], [Add("resid_post.3", torch.ones(lm.d_model), alpha=0.0)], **kw)[0]
    assert plain == by_hand and traced == by_hand
    assert generate(lm, [text], **{**kw, "no_repeat_ngram_size": 0})[0] != by_hand  # it changed the reply
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="no_repeat_ngram_size="):
            generate(lm, ["hi"], no_repeat_ngram_size=bad)


def test_intervention_errors_name_the_input(smol):
    with pytest.raises(ValueError, match="positions='middle'"):
        Add("resid_post.1", torch.zeros(smol.d_model), positions="middle")
    with pytest.raises(ValueError, match="positions='last:0'"):
        Add("resid_post.1", torch.zeros(smol.d_model), positions="last:0")
    with pytest.raises(ValueError, match="has 10 dims but site resid_post.1 has 576"):
        generate(smol, ["hi"], [Add("resid_post.1", torch.zeros(10))])
    with pytest.raises(ValueError, match=r"out of range for attn_z.1: expected 0\.\.8"):
        forward(smol, ["hi"], [Set("attn_z.1", [9])])
    with pytest.raises(TypeError, match="Add, Set, Scale or Transcode"):
        generate(smol, ["hi"], ["not an intervention"])
    with pytest.raises(TypeError, match="list of str"):
        generate(smol, "hi")
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        generate(smol, ["hi"], max_new_tokens=0)


def test_next_token_logits_name_the_token_each_push_promotes_beyond_the_others(smol):
    """Pushes along three tokens' unembedding rows at the last layer: each push's mean logits minus the three's
    mean rank its own token first (a shift against no push is led by tokens any push promotes); the batched
    mean equals one prompt at a time, and a push of zero changes nothing."""
    lm = smol
    W = lm.hf.get_output_embeddings().weight.detach().float()
    tokens = [lm.tokenizer.encode(w, add_special_tokens=False)[0] for w in (" afraid", " happy", " angry")]
    pushes = [[Add(f"resid_post.{lm.n_layers - 1}", W[t] / W[t].norm(), alpha=30.0, positions="last:1")]
              for t in tokens]
    means = torch.stack([next_token_logits(lm, PROMPTS, p, batch_size=2) for p in pushes])  # two batches
    specific = means - means.mean(0)
    assert [int(row.argmax()) for row in specific] == tokens
    plain = next_token_logits(lm, PROMPTS)
    assert all(float(means[k, t] - plain[t]) > 2 for k, t in enumerate(tokens))
    one_by_one = torch.stack([next_token_logits(lm, [p], pushes[0]) for p in PROMPTS]).mean(0)
    assert torch.allclose(means[0], one_by_one, atol=1e-3)  # left padding: each row's last position is read
    zero = [Add(pushes[0][0].site, pushes[0][0].vector, alpha=0.0, positions="last:1")]
    assert torch.equal(next_token_logits(lm, PROMPTS, zero), plain)
    with pytest.raises(ValueError, match="prompts must be a non-empty list"):
        next_token_logits(lm, "one string", pushes[0])
    assert torch.equal(next_token_logits(lm, PROMPTS, batch_size=np.int64(2)),  # a NumPy int is an int
                       next_token_logits(lm, PROMPTS, batch_size=2))
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="batch_size="):
            next_token_logits(lm, PROMPTS, batch_size=bad)
        with pytest.raises(ValueError, match="batch_size="):
            generate(lm, PROMPTS, max_new_tokens=1, batch_size=bad)


def test_a_decoding_is_checked_once_and_gives_what_its_settings_by_name_give(smol):
    """A Decoding refuses bad settings by name when it is made; generate, generate_grid and sweep decode
    the same with it as with the same settings given by name, and a setting given by name overrides it."""
    for bad, match in [(dict(max_new_tokens=0), "max_new_tokens=0"), (dict(do_sample=True, temperature=0), "temperature=0"),
                       (dict(top_p=1.5), "top_p=1.5"), (dict(repetition_penalty=-1), "repetition_penalty=-1"),
                       (dict(no_repeat_ngram_size=2.5), "no_repeat_ngram_size=2.5"), (dict(seed="a"), "seed='a'")]:
        with pytest.raises(ValueError, match=match):
            Decoding(**bad)
    with pytest.raises(TypeError, match="unknown decoding setting.*max_tokens"):
        Decoding().replace(max_tokens=3)
    with pytest.raises(TypeError, match="unknown decoding setting"):
        generate(smol, PROMPTS, max_tokens=3)
    assert Decoding(max_new_tokens=np.int64(5)).max_new_tokens == 5 and type(Decoding(seed=np.int64(2)).seed) is int
    dec = Decoding(max_new_tokens=12, do_sample=True, temperature=0.8, seed=4, repetition_penalty=1.2)
    by_name = generate(smol, PROMPTS, max_new_tokens=12, do_sample=True, temperature=0.8, seed=4, repetition_penalty=1.2)
    assert generate(smol, PROMPTS, decoding=dec) == by_name
    assert generate(smol, PROMPTS, decoding=dec.replace(max_new_tokens=40), max_new_tokens=12) == by_name
    assert generate_grid(smol, PROMPTS, [[]], decoding=dec)[0] == by_name
    recs = sweep(smol, [{"id": str(i), "user": u} for i, u in enumerate(PROMPTS)], torch.ones(smol.d_model), [0], [0],
                 seeds=[4], decoding=dec.replace(seed=0))  # a sweep puts each of its seeds in
    assert [r["text"] for r in recs] == by_name
