"""Circuits: exact decompositions on tiny models of both layouts, assembly rules, causal checks on the bundled model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emocircuits import causal
from emocircuits import choosing
from emocircuits import circuits as C
from emocircuits import contributions
from emocircuits import datasets as ds
from emocircuits import emotion_acts
from emocircuits.activations import capture
from emocircuits.generation import generate
from emocircuits.interventions import Scale, Set

TEXTS = ["My dog died this morning.", "I got the job! We celebrate tonight.",
         "The lake froze overnight and the weather turned cold.", "Could you help me plan a party?"]


@pytest.fixture
def tiny(tiny_arch):
    """Each architecture in turn (conftest.tiny_arch)."""
    return tiny_arch


def _dirs(lm, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, lm.d_model, generator=g, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def test_neuron_terms_add_up_to_mlp_output(tiny):
    layer = 1
    acts = capture(tiny, TEXTS, [f"mlp_act.{layer}", f"mlp_out.{layer}"], progress=False)
    V = _dirs(tiny)
    c = contributions.neuron_contributions(tiny, layer, acts[f"mlp_act.{layer}"], V)
    assert c.shape == (len(TEXTS), 3, tiny.d_mlp)
    want = acts[f"mlp_out.{layer}"].double() @ V.T
    torch.testing.assert_close(c.sum(-1), want, rtol=1e-4, atol=1e-4)
    single = contributions.neuron_contributions(tiny, layer, acts[f"mlp_act.{layer}"], V[0])
    torch.testing.assert_close(single, c[:, 0])


def test_head_terms_add_up_and_match_zeroing(tiny):
    layer = 2
    acts = capture(tiny, TEXTS, [f"attn_z.{layer}", f"attn_out.{layer}", f"resid_mid.{layer}"], progress=False)
    V = _dirs(tiny, 2, seed=1)
    c = contributions.head_contributions(tiny, layer, acts[f"attn_z.{layer}"], V)
    assert c.shape == (len(TEXTS), 2, tiny.n_heads)
    torch.testing.assert_close(c.sum(-1), acts[f"attn_out.{layer}"].double() @ V.T, rtol=1e-4, atol=1e-4)
    # zeroing head h changes the MLP input by exactly its term on Llama; on Gemma the
    # post-attention norm rescales, so only the sign and rough size carry over
    base = acts[f"resid_mid.{layer}"].double() @ V[0]
    drops = []
    for h in range(tiny.n_heads):
        got = capture(tiny, TEXTS, [f"resid_mid.{layer}"], progress=False,
                      interventions=[Set(f"attn_z.{layer}", [h], 0.0)])[f"resid_mid.{layer}"]
        drops.append(base - got.double() @ V[0])
    drops = torch.stack(drops, 1)
    if tiny.arch == "llama":
        torch.testing.assert_close(drops, c[:, 0], rtol=1e-4, atol=1e-4)
    else:
        assert np.corrcoef(drops.flatten(), c[:, 0].flatten())[0, 1] > 0.5


def test_bad_shapes_are_named(tiny_llama):
    with pytest.raises(ValueError, match="attn_z must be"):
        contributions.head_contributions(tiny_llama, 0, torch.zeros(2, 3), _dirs(tiny_llama)[0])
    with pytest.raises(ValueError, match="direction has"):
        contributions.neuron_contributions(tiny_llama, 0, torch.zeros(2, tiny_llama.d_mlp), torch.zeros(5))
    with pytest.raises(ValueError, match="batch_size=0"):
        causal.LastToken(tiny_llama, ["a prompt"], batch_size=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        causal.sublayer_influence(tiny_llama, ["a prompt"], {}, np.zeros((1, tiny_llama.d_model)), batch_size=0)


def test_scores_centre_out_what_contexts_share():
    # two groups, two emotions; a component that is high for every emotion in group g1 scores 0 when centred
    contrib = torch.zeros(4, 2, 3, dtype=torch.float64)
    contrib[:2, :, 0] = 5.0  # group g1, both emotions, component 0
    contrib[0, 0, 1] = 2.0   # emotion a in g1, along a's direction, component 1
    contrib[2, 0, 1] = 2.0   # emotion a in g2
    labels, groups = ["a", "b", "a", "b"], ["g1", "g1", "g2", "g2"]
    s = contributions.scores_by_emotion(contrib, labels, groups, ["a", "b"])
    assert s.shape == (2, 3)
    assert s[0, 0] == pytest.approx(0.0) and s[0, 1] == pytest.approx(1.0)
    raw = contributions.scores_by_emotion(contrib, labels, groups, ["a", "b"], centre=False)
    assert raw[0, 0] == pytest.approx(2.5) and raw[0, 1] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no kept prompts"):
        contributions.scores_by_emotion(contrib, labels, groups, ["a", "b"], keep=[False, True, False, True])


def test_tail_share():
    s = np.r_[np.full(99, 0.01), 99.0 * 0.01 * 9]  # one component carries 90% of the positive mass
    assert contributions.tail_share(s, (0.01,))[0.01] == pytest.approx(0.9)
    assert np.isnan(contributions.tail_share(-np.ones(10))[0.01])


def test_allocate_respects_minimum_cap_and_total():
    infl = np.r_[100.0, np.zeros(9), 1.0, -5.0]
    q = C.allocate(infl, total=60, capacity=20, minimum=2, cap=0.4)
    assert q.sum() == 60 and q.min() >= 2
    assert q[0] == 20  # capacity binds before the 40% cap (24)
    assert q[10] > q[1] and q[11] == 2  # negative influence earns only the minimum
    q2 = C.allocate(infl, total=60, capacity=1000, minimum=2, cap=0.4)
    assert q2[0] == 24 and q2.sum() == 60
    assert (C.allocate(np.zeros(5), 10, 100, 0) == 2).all()
    with pytest.raises(ValueError, match="below the per-layer minimum"):
        C.allocate(infl, total=10, capacity=20, minimum=2)
    with pytest.raises(ValueError, match="does not fit"):
        C.allocate(np.ones(3), total=100, capacity=20, minimum=1)


def test_assemble_random_like_and_json(tiny_llama, tmp_path):
    L = tiny_llama.n_layers
    rng = np.random.default_rng(0)
    ns = {l: rng.normal(size=tiny_llama.d_mlp) for l in range(L)}
    hs = {l: rng.normal(size=tiny_llama.n_heads) for l in range(L)}
    circ = C.assemble("joy", tiny_llama.name, ns, hs, attn_influence=[1, 0, 0], mlp_influence=[0, 0, 3],
                      n_neurons=20, n_heads=4, min_neurons=2, min_heads=1, cap=0.6)
    counts = circ.counts(L)
    assert counts[:, 0].sum() == 20 and counts[:, 1].sum() == 4
    assert counts[2, 0] == 12 and counts[0, 1] == 2
    top2 = {c.index for c in circ.components if c.layer == 2 and c.kind == "neuron"}
    assert top2 == set(np.argsort(-ns[2])[:12].tolist())
    rand = C.random_like(circ, tiny_llama, seed=1)
    assert (rand.counts(L) == counts).all()
    assert not {(c.layer, c.kind, c.index) for c in rand.components} & {(c.layer, c.kind, c.index) for c in circ.components}
    greedy = C.top_components("joy", tiny_llama.name, ns, hs, k=4, kind="head")
    if greedy.counts(L)[:, 1].max() == tiny_llama.n_heads:
        with pytest.raises(ValueError, match="outside the circuit"):
            C.random_like(greedy, tiny_llama, strict=True)
        loose = C.random_like(greedy, tiny_llama)
        assert (loose.counts(L) == greedy.counts(L)).all() and loose.meta["overlap"] > 0
    half = circ.top(0.5)
    for kind, n in (("neuron", 10), ("head", 2)):
        kept = [c.score for c in half.components if c.kind == kind]
        dropped = [c.score for c in circ.components if c.kind == kind and c not in half.components]
        assert len(kept) == n and min(kept) >= max(dropped)
    assert circ.top(0.3).counts(L).sum(0).tolist() == [6, 2]  # each kind rounds up
    assert sorted(circ.top(1.0).components, key=repr) == sorted(circ.components, key=repr)
    assert (C.random_like(half, tiny_llama, seed=1).counts(L) == half.counts(L)).all()
    assert half.meta == {"share": 0.5, "of": 24}
    assert greedy.top(0.5).counts(L).sum(0).tolist() == [0, 2]  # a kind the circuit lacks stays empty
    for bad in (0, 1.5, "half", True):
        with pytest.raises(ValueError, match="share="):
            circ.top(bad)
    path = circ.to_json(tmp_path / "c.json")
    back = C.Circuit.from_json(path)
    assert back.components == circ.components and back.emotion == "joy"
    (tmp_path / "bad.json").write_text(json.dumps({"emotion": "x", "model": "m", "components": [{"layer": 0}]}))
    with pytest.raises(ValueError, match="not a circuit file"):
        C.Circuit.from_json(tmp_path / "bad.json")


def test_two_circuits_share_components_by_kind_against_random_draws_within_their_layers(tiny_llama):
    """shared_with counts the components both circuits hold, as shares of the first's size by kind;
    chance_shared_with is what random draws with the same counts per layer share on average."""
    N = C.Component
    a = C.Circuit("joy", "m", [N(0, "neuron", 1), N(0, "neuron", 2), N(1, "neuron", 3), N(1, "head", 0)])
    b = C.Circuit("fear", "m", [N(0, "neuron", 2), N(1, "neuron", 3), N(1, "neuron", 4), N(1, "head", 0),
                                N(1, "head", 1), N(0, "head", 1)])
    assert a.shared_with(b) == {"neuron": 0.5, "head": 0.25} and b.shared_with(a) == {"neuron": 2 / 6, "head": 1 / 6}
    assert sum(a.shared_with(a).values()) == 1.0
    lm = tiny_llama
    ca, cb = a.counts(lm.n_layers), b.counts(lm.n_layers)
    chance = a.chance_shared_with(b, lm)
    assert chance["neuron"] == pytest.approx((2 * 1 + 1 * 2) / lm.d_mlp / 4)
    assert chance["head"] == pytest.approx((0 * 1 + 1 * 2) / lm.n_heads / 4)
    # the formula is the mean overlap of circuits drawn uniformly at random within the same layers
    rng = np.random.default_rng(0)

    def drawn(counts, name):
        return C.Circuit(name, "m", [N(layer, kind, int(i)) for layer, row in enumerate(counts)
                                     for k, (kind, width) in enumerate(zip(C.KINDS, (lm.d_mlp, lm.n_heads)))
                                     for i in rng.choice(width, size=row[k], replace=False)])

    draws = [drawn(ca, "a").shared_with(drawn(cb, "b")) for _ in range(4000)]
    for kind in C.KINDS:
        assert np.mean([d[kind] for d in draws]) == pytest.approx(chance[kind], abs=0.01)
    assert (ca.sum(0) == [3, 1]).all() and (cb.sum(0) == [3, 3]).all()
    m = C.pairwise(C.Circuit.shared_with, {"joy": a, "fear": b}, ["joy", "fear"])
    assert m["neuron"].tolist() == [[0.75, 0.5], [2 / 6, 0.5]] and m["head"][0, 1] == 0.25


def test_assemble_each_gives_every_emotion_its_circuit_from_its_own_row(tiny_llama, tmp_path):
    L = tiny_llama.n_layers
    rng = np.random.default_rng(0)
    ns = {l: rng.normal(size=(2, tiny_llama.d_mlp)) for l in range(L)}
    hs = {l: rng.normal(size=(2, tiny_llama.n_heads)) for l in range(L)}
    infl = {"attn": rng.uniform(size=(L, 2)), "mlp": rng.uniform(size=(L, 2))}
    budget = dict(n_neurons=12, n_heads=3, min_neurons=1, min_heads=1, cap=0.6)
    got = C.assemble_each(tiny_llama, ["joy", "fear"], ns, hs, infl, budget, out_dir=tmp_path, suffix="_x")
    for e, emo in enumerate(["joy", "fear"]):
        alone = C.assemble(emo, tiny_llama.name, {l: ns[l][e] for l in range(L)}, {l: hs[l][e] for l in range(L)},
                           attn_influence=infl["attn"][:, e], mlp_influence=infl["mlp"][:, e], **budget)
        assert got[emo].components == alone.components
        assert C.Circuit.from_json(tmp_path / f"{emo}_x.json").components == alone.components
    assert got["joy"].components != got["fear"].components
    assert C.assemble_each(tiny_llama, ["joy"], ns, hs, infl, budget)["joy"].components == got["joy"].components


def test_modulation_adds_centred_means_at_components(tiny_llama):
    labels = ["a", "b"] * 2
    groups = ["g1", "g1", "g2", "g2"]
    acts = capture(tiny_llama, TEXTS, ["mlp_act.1", "attn_z.2"], progress=False)
    means = C.group_centred_means(acts, labels, groups, ["a", "b"])
    assert means["attn_z.2"].shape == (2, tiny_llama.n_heads, tiny_llama.head_dim)
    torch.testing.assert_close(means["mlp_act.1"][0], -means["mlp_act.1"][1], rtol=1e-5, atol=1e-6)
    circ = C.Circuit("a", tiny_llama.name, [C.Component(1, "neuron", 3), C.Component(2, "head", 1)])
    ivs = C.modulation(circ, means, ["a", "b"], scale=2.0)
    by = {str(iv.site): iv for iv in ivs}
    v = by["mlp_act.1"].vector
    assert v[3] == pytest.approx(2 * float(means["mlp_act.1"][0, 3])) and int((v != 0).sum()) == 1
    h = by["attn_z.2"].vector.reshape(tiny_llama.n_heads, -1)
    torch.testing.assert_close(h[1], 2 * means["attn_z.2"][0, 1])
    assert float(h[[0, 2, 3]].abs().sum()) == 0
    out = generate(tiny_llama, ["Hello"], ivs, max_new_tokens=4, return_ids=True)
    assert len(out) == 1


def test_modulation_pushes_heads_at_every_position_when_asked(tiny_llama):
    """head_positions="all" (paper B's released code) moves the circuit's head at every prompt
    position; by default only the last one moves, and neurons stay at the last position either way."""
    labels, groups = ["a", "b"] * 2, ["g1", "g1", "g2", "g2"]
    sites = ["mlp_act.1", "attn_z.2"]
    means = C.group_centred_means(capture(tiny_llama, TEXTS, sites, progress=False), labels, groups, ["a", "b"])
    heads = C.Circuit("a", tiny_llama.name, [C.Component(2, "head", 1)])
    neurons = C.Circuit("a", tiny_llama.name, [C.Component(1, "neuron", 3)])
    base = capture(tiny_llama, TEXTS[:1], sites, pooling="none", progress=False)
    n_tok = base["attn_z.2"][0].shape[0]

    def change(circ, head_pos, site):
        ivs = C.modulation(circ, means, ["a", "b"], scale=2.0, head_positions=head_pos)
        assert {iv.positions for iv in ivs} == {(head_pos or "last:1") if site == "attn_z.2" else "last:1"}
        got = capture(tiny_llama, TEXTS[:1], sites, pooling="none", progress=False, interventions=ivs)
        return (got[site][0] - base[site][0]).reshape(n_tok, -1)

    head_vec = torch.zeros(tiny_llama.n_heads, tiny_llama.head_dim)
    head_vec[1] = 2 * means["attn_z.2"][0, 1].float()
    for head_pos, moved in ((None, [n_tok - 1]), ("all", range(n_tok))):
        dz = change(heads, head_pos, "attn_z.2")
        for t in range(n_tok):
            torch.testing.assert_close(dz[t], head_vec.reshape(-1) if t in moved else torch.zeros_like(dz[t]),
                                       rtol=1e-4, atol=1e-5)
        dn = change(neurons, head_pos, "mlp_act.1")
        assert float(dn[:-1].abs().max()) == 0
        assert float(dn[-1, 3]) == pytest.approx(2 * float(means["mlp_act.1"][0, 3]), rel=1e-4)
    with pytest.raises(ValueError, match="positions='everywhere'"):
        C.modulation(heads, means, ["a", "b"], scale=2.0, head_positions="everywhere")


def test_scale_doubles_a_neuron(tiny_gemma):
    base = capture(tiny_gemma, TEXTS[:2], ["mlp_act.0"], progress=False)["mlp_act.0"]
    got = capture(tiny_gemma, TEXTS[:2], ["mlp_act.0"], progress=False,
                  interventions=[Scale("mlp_act.0", [5, 7], 2.0)])["mlp_act.0"]
    torch.testing.assert_close(got[:, [5, 7]], 2 * base[:, [5, 7]])
    torch.testing.assert_close(got[:, :5], base[:, :5])


def test_emotion_signal_cancels_shared_shifts(tiny_llama):
    V = _dirs(tiny_llama, 2, seed=6).float().numpy()
    texts = [f"{t} Be {e}." for t in TEXTS[:3] for e in ("glad", "sad")]  # 3 scenarios x 2 asked emotions
    sig = causal.emotion_signal(tiny_llama, texts, V)
    p = causal.projection(tiny_llama, texts, V).reshape(3, 2, 2)
    np.testing.assert_allclose(sig[:, 0], p[:, 0, 0] - p[:, 1, 0], rtol=1e-5, atol=1e-6)
    # a push along the last layer's output shifts every prompt alike: the signal does not move
    from emocircuits.interventions import Add

    push = Add(f"resid_post.{tiny_llama.n_layers - 1}", torch.as_tensor(V[0]), alpha=7.0)
    np.testing.assert_allclose(causal.emotion_signal(tiny_llama, texts, V, [push]), sig, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not a multiple"):
        causal.emotion_signal(tiny_llama, texts[:5], V)


def test_last_token_runner_matches_full_forward(tiny):
    circ = C.Circuit("x", tiny.name, [C.Component(0, "neuron", 3), C.Component(1, "head", 2),
                                      C.Component(2, "neuron", 9)])
    sites = [f"resid_post.{tiny.n_layers - 1}", "mlp_act.2"]
    runner = causal.LastToken(tiny, TEXTS, batch_size=3)
    for ivs in ([], C.ablation(circ, positions="last:1"), C.enhance(circ, 3.0, positions="last:1")):
        got = runner(sites, ivs)
        want = capture(tiny, TEXTS, sites, interventions=ivs, progress=False)
        for s in sites:
            torch.testing.assert_close(got[s], want[s], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="positions='last:1' only"):
        runner(sites, C.ablation(circ))
    V = _dirs(tiny, 2).float().numpy()
    texts = TEXTS[:4]
    np.testing.assert_allclose(causal.emotion_signal(tiny, causal.LastToken(tiny, texts), V), causal.emotion_signal(tiny, texts, V),
                               rtol=1e-4, atol=1e-4)


def test_influence_of_the_last_mlp_on_its_own_direction_is_one(tiny):
    L = tiny.n_layers
    V = _dirs(tiny, 2, seed=3).float().numpy()
    local = {f"attn_out.{L - 1}": V, f"mlp_out.{L - 1}": V}
    infl = causal.sublayer_influence(tiny, TEXTS[:2], local, V, alphas=(1.0, 2.0), layers=[L - 1], progress=False)
    np.testing.assert_allclose(infl["mlp"][L - 1], 1.0, atol=1e-3)
    assert np.isnan(infl["mlp"][0]).all()
    assert np.isfinite(infl["attn"][L - 1]).all()


def test_influence_matches_a_full_forward_with_the_push(tiny):
    """The cached-prefix shortcut gives what a full forward with the push at the last position gives."""
    from emocircuits.interventions import Add

    layer, E = 1, 2
    V = _dirs(tiny, E, seed=4).float().numpy()
    local = {f"attn_out.{layer}": V, f"mlp_out.{layer}": V[::-1].copy()}
    texts = TEXTS[:3]
    infl = causal.sublayer_influence(tiny, texts, local, V, alphas=(1.5,), layers=[layer], batch_size=2,
                                progress=False)
    sig = infl["sigma"][f"resid_post.{layer}"]
    last = f"resid_post.{tiny.n_layers - 1}"
    base = capture(tiny, texts, [last], progress=False)[last].double().numpy() @ V.T
    for e in range(E):
        push = Add(f"mlp_out.{layer}", torch.as_tensor(local[f"mlp_out.{layer}"][e]), alpha=1.5 * sig,
                   positions="last:1")
        got = capture(tiny, texts, [last], progress=False, interventions=[push])[last].double().numpy() @ V.T
        want = (got[:, e] - base[:, e]).mean() / (1.5 * sig)
        assert infl["mlp"][layer, e] == pytest.approx(want, rel=1e-3, abs=1e-4)


def test_chapter_04s_sublayer_influences_read_each_emotion_and_a_random_push_on_their_own_directions(tiny_llama):
    """Each emotion's own sublayer directions read on its last-layer direction, and a last column for the random
    push read on the reference emotion's: what sublayer_influence gives for those directions by hand."""
    emotions, L = ["happiness", "sadness"], tiny_llama.n_layers
    rng = np.random.default_rng(3)
    dirs = {f"{k}.{l}": rng.normal(size=(2, tiny_llama.d_model)) for l in range(L)
            for k in ("attn_out", "mlp_out", "resid_post")}
    push = rng.normal(size=tiny_llama.d_model)
    got = emotion_acts.sublayer_influences(tiny_llama, dirs, TEXTS[:2], emotions, push, alphas=(1.0,), batch_size=2,
                                           reference="sadness")
    assert got["attn"].shape == got["mlp"].shape == (L, 3)
    last = dirs[f"resid_post.{L - 1}"]
    for l in (0, L - 1):
        local = {f"{k}.{l}": np.vstack([dirs[f"{k}.{l}"], push]) for k in ("attn_out", "mlp_out")}
        want = causal.sublayer_influence(tiny_llama, TEXTS[:2], local, np.vstack([last, last[1]]), alphas=(1.0,),
                                         layers=[l], batch_size=2, progress=False)
        for kind in ("attn", "mlp"):
            np.testing.assert_allclose(got[kind][l], want[kind][l], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="reference='fear'"):
        emotion_acts.sublayer_influences(tiny_llama, dirs, TEXTS[:2], emotions, push, reference="fear")


def test_circuit_ablation_beats_random_on_smollm2(smol):
    """On the bundled model: knocking out the neurons that write most along a direction lowers it more than random ones."""
    texts = [smol.chat_prompt(t) for t in TEXTS]
    layers = list(range(smol.n_layers - 4, smol.n_layers))
    acts = capture(smol, texts, [f"mlp_act.{l}" for l in layers], progress=False)
    v = _dirs(smol, 1, seed=5)[0].numpy()
    ns = {l: contributions.neuron_contributions(smol, l, acts[f"mlp_act.{l}"], v).mean(0).numpy() for l in layers}
    hs = {l: np.zeros(smol.n_heads) for l in layers}
    circ = C.top_components("x", smol.name, ns, hs, k=40, kind="neuron")
    measure = lambda ivs: causal.projection(smol, texts, v, interventions=ivs)  # noqa: E731
    res = causal.ablate(smol, circ, measure, mode="zero", n_random=3)
    assert res["circuit"].mean() > 3 * np.abs(res["random"].mean(1)).max()
    means = C.component_means(acts)
    res_m = causal.ablate(smol, circ, measure, mode="mean", means=means, n_random=1)
    assert res_m["circuit"].mean() > 0
    up = causal.projection(smol, texts, v, interventions=C.enhance(circ, 2.0))
    assert (up - res["base"]).mean() > 0


def test_direction_steering_splits_the_push_over_layers():
    emos = ["anger", "joy"]
    dirs = {f"resid_post.{la}": np.eye(2, 4)[[1, 0]] for la in (1, 2)}
    ivs = C.direction_steering(dirs, emos, "joy", alpha=3.0, rms={1: 2.0, 2: 4.0}, layers=[1, 2])
    assert [str(iv.site) for iv in ivs] == ["resid_post.1", "resid_post.2"]
    assert [iv.alpha for iv in ivs] == [3.0, 6.0] and all(iv.positions == "last:1" for iv in ivs)
    assert torch.equal(ivs[0].vector, torch.tensor([1.0, 0, 0, 0]))
    with pytest.raises(ValueError, match="no direction or RMS"):
        C.direction_steering(dirs, emos, "joy", 1.0, {1: 1.0}, layers=[1, 2])
    with pytest.raises(ValueError, match="not one of"):
        C.direction_steering(dirs, emos, "fear", 1.0, {1: 1.0}, layers=[1])


def test_sev_activations_is_one_cached_capture_of_every_site(tiny_llama, tmp_path, monkeypatch):
    """Chapters 03 and 04 read the same cached capture: prompts, sites and values as a direct capture gives."""
    from emocircuits import datasets as ds

    monkeypatch.setenv("EMOCIRCUITS_CACHE", str(tmp_path))
    recs = ds.first_per_theme(ds.load_named("sev_discovery"), 1)[:2]
    prompts, acts = emotion_acts.sev_activations(tiny_llama, recs)
    assert len(prompts) == 2 * 3 * 6
    L = tiny_llama.n_layers
    assert set(acts) == set(emotion_acts.direction_sites(L)) | {f"{k}.{l}" for k in ("mlp_act", "attn_z") for l in range(L)}
    texts = [tiny_llama.chat_prompt(p["user"], system=p["system"]) for p in prompts]
    direct = capture(tiny_llama, texts, ["resid_post.1", "attn_z.0"], progress=False)
    torch.testing.assert_close(acts["resid_post.1"], direct["resid_post.1"], rtol=1e-4, atol=1e-4)
    assert acts["attn_z.0"].shape == direct["attn_z.0"].shape
    assert len(list((tmp_path / "activations").glob("*.safetensors"))) == 1
    again = emotion_acts.sev_activations(tiny_llama, recs)[1]  # from the cache
    assert all(torch.equal(again[k], acts[k]) for k in acts)

    sub_prompts, sub = emotion_acts.sev_activations(tiny_llama, recs, keep=recs[1:])  # rows of the same capture
    assert len(list((tmp_path / "activations").glob("*.safetensors"))) == 1
    rows = [i for i, p in enumerate(prompts) if p["record_id"] == recs[1].id]
    assert sub_prompts == [prompts[i] for i in rows] and len(rows) == 18
    assert all(torch.equal(sub[k], acts[k][rows]) for k in acts)
    other = ds.load_named("sev_discovery")[-1]
    with pytest.raises(ValueError, match=rf"keep: records \['{other.id}'\] are not among the 2 records captured"):
        emotion_acts.sev_activations(tiny_llama, recs, keep=[other])


def test_sev_residuals_reads_shared_rows_and_captures_the_rest(tiny_llama, tmp_path, monkeypatch):
    """Chapter 03's larger emotion set: shared records come from sev_activations' capture, the others
    from a residual-only capture; rows in sev_prompts order, values as a direct capture gives."""
    from emocircuits import datasets as ds

    monkeypatch.setenv("EMOCIRCUITS_CACHE", str(tmp_path))
    recs = ds.first_per_theme(ds.load_named("sev_discovery"), 2)[:4]  # two themes, two scenarios each
    shared = [recs[0], recs[2]]
    _, shared_acts = emotion_acts.sev_activations(tiny_llama, shared)
    prompts, acts = emotion_acts.sev_residuals(tiny_llama, recs, shared=shared)
    assert prompts == ds.sev_prompts(recs)
    L = tiny_llama.n_layers
    assert list(acts) == [f"resid_post.{l}" for l in range(L)]
    assert all(x.shape == (4 * 18, tiny_llama.d_model) for x in acts.values())
    # shared rows are the shared capture's rows, bit for bit
    for k, rec in enumerate(shared):
        mine = [i for i, p in enumerate(prompts) if p["record_id"] == rec.id]
        assert torch.equal(acts["resid_post.1"][mine], shared_acts["resid_post.1"][k * 18:(k + 1) * 18])
    # every row equals a direct capture of its prompt
    texts = [tiny_llama.chat_prompt(p["user"], system=p["system"]) for p in prompts]
    direct = capture(tiny_llama, texts, [f"resid_post.{L - 1}"], progress=False)
    torch.testing.assert_close(acts[f"resid_post.{L - 1}"], direct[f"resid_post.{L - 1}"], rtol=1e-4, atol=1e-4)
    # one more capture file (the unshared records', residual stream only); a rerun reads both back
    assert len(list((tmp_path / "activations").glob("*.safetensors"))) == 2
    again = emotion_acts.sev_residuals(tiny_llama, recs, shared=shared)[1]
    assert len(list((tmp_path / "activations").glob("*.safetensors"))) == 2
    assert all(torch.equal(again[k], acts[k]) for k in acts)
    # with every record shared, nothing new is captured
    assert emotion_acts.sev_residuals(tiny_llama, shared, shared=shared)[0] == ds.sev_prompts(shared)
    assert len(list((tmp_path / "activations").glob("*.safetensors"))) == 2
    with pytest.raises(ValueError, match=rf"records: \['{recs[0].id}'\] appear more than once"):
        emotion_acts.sev_residuals(tiny_llama, [recs[0], recs[0]])


def test_choose_strength_takes_the_smallest_best_coherent_strength_overall_and_per_group():
    import pandas as pd

    rows = []  # (emotion, scale, hit, coherent): anger is most accurate at 12, which is half incoherent
    for scale, hits, coh in ((4, [0, 0], [1, 1]), (8, [1, 0], [1, 1]), (12, [1, 1], [0, 1])):
        rows += [("anger", scale, h, c) for h, c in zip(hits, coh)]
    for scale, coh in ((4, [1, 0]), (8, [1, 1]), (12, [1, 1])):
        rows += [("fear", scale, 0, c) for c in coh]
    df = pd.DataFrame(rows, columns=["emotion", "scale", "hit", "coherent"]).astype({"hit": bool, "coherent": bool})
    df["record_id"] = [f"sev-d-work-{i % 4 + 1:02d}" for i in range(len(df))]  # discovery records
    assert choosing.choose_strength(df, by="emotion") == {"anger": 8.0, "fear": 8.0}  # fear: smallest coherent tie
    assert choosing.choose_strength(df) == 8.0  # pooled: 12 is more accurate (0.5 vs 0.25) but 0.75 coherent
    assert isinstance(choosing.choose_strength(df), float)
    assert choosing.choose_strength(df, min_coherent=0.5) == 12.0 and choosing.choose_strength(df, min_coherent=0.5,
                                                                                 by="emotion")["anger"] == 12.0
    bad = df.assign(coherent=False)  # none coherent: the most accurate strength, the smallest among ties
    assert choosing.choose_strength(bad, by="emotion") == {"anger": 12.0, "fear": 4.0}
    with pytest.raises(ValueError, match="missing \\['hit'\\]"):
        choosing.choose_strength(df.drop(columns="hit"))
    with pytest.raises(ValueError, match="min_coherent must be a share"):
        choosing.choose_strength(df, min_coherent=90)
    with pytest.raises(ValueError, match="no rows"):
        choosing.choose_strength(df.iloc[:0])
    with pytest.raises(ValueError, match="replies\\['emotion'\\] has missing values"):
        choosing.choose_strength(df.assign(emotion=df.emotion.where(df.scale != 4)), by="emotion")


def test_choose_strength_picks_among_named_candidates_in_their_given_order():
    import pandas as pd

    rows = []  # (emotion, way, hit, coherent): fear is better "from text"; anger ties, so the first way wins
    for way, hits, coh in (("paper B", [0, 0, 0, 1], [1] * 4), ("from text", [1, 1, 1, 0], [1, 1, 1, 1])):
        rows += [("fear", way, h, c) for h, c in zip(hits, coh)]
    for way in ("paper B", "from text"):
        rows += [("anger", way, h, 1) for h in (1, 1, 0, 1)]
    df = pd.DataFrame(rows, columns=["emotion", "way", "hit", "coherent"]).astype({"hit": bool, "coherent": bool})
    df["record_id"] = "sev-d-home-03"
    df["way"] = pd.Categorical(df.way, categories=["paper B", "from text"], ordered=True)  # not alphabetical
    assert choosing.choose_strength(df, by="emotion", option="way") == {"fear": "from text", "anger": "paper B"}
    # a better but incoherent candidate loses to a coherent one
    worse = df.assign(coherent=~((df.emotion == "fear") & (df.way == "from text") & (df.hit)))
    assert choosing.choose_strength(worse, by="emotion", option="way")["fear"] == "paper B"
    with pytest.raises(ValueError, match="missing \\['way'\\]"):
        choosing.choose_strength(df.drop(columns="way"), option="way")
    with pytest.raises(ValueError, match="replies\\['way'\\] has missing values"):
        choosing.choose_strength(df.assign(way=df.way.where(df.hit)), option="way")


def test_choose_strength_refuses_replies_made_from_test_records_naming_them():
    """The locked protocol: a choice reads discovery records only. A reply built from an SEV test record (or
    any record of protocol.TEST_SPLITS) makes the choice fail, naming it; replies without record ids are
    refused too, so the check cannot be skipped by leaving the column out."""
    import pandas as pd

    from emocircuits import protocol

    df = pd.DataFrame({"scale": [4.0, 8.0, 4.0, 8.0], "hit": [False, True, False, True], "coherent": [True] * 4,
                       "record_id": ["sev-d-work-01", "sev-d-work-01", "sev-d-home-02", "sev-d-home-02"]})
    assert choosing.choose_strength(df) == 8.0
    leaked = df.assign(record_id=["sev-d-work-01", "sev-t-work-01", "sev-d-home-02", "sev-t-home-05"])
    with pytest.raises(protocol.ProtocolError, match=r"choose_strength: replies\['record_id'\]: 2 record\(s\) of a test split .*"
                                                     r"\(sev-t-home-05, sev-t-work-01\)"):
        choosing.choose_strength(leaked)
    with pytest.raises(protocol.ProtocolError, match="sit-confirm-01"):
        choosing.choose_strength(df.assign(record_id="sit-confirm-01"))
    with pytest.raises(ValueError, match="missing \\['record_id'\\]"):
        choosing.choose_strength(df.drop(columns="record_id"))
    for blank in (None, float("nan"), " "):  # a missing id cannot slip past as the string 'None' or 'nan'
        with pytest.raises(ValueError, match=r"replies\['record_id'\]: record id missing at positions \[1\]"):
            choosing.choose_strength(df.assign(record_id=["sev-d-work-01", blank, "sev-d-home-02", "sev-d-home-02"]))
    ids = protocol.test_ids()
    assert {"sev-t-work-01", "sit-confirm-24", "chat-001", "fresh-180"} <= ids
    assert not {i for i in ids if i.startswith(("sev-d-", "sit-heldout-"))}
    pairs = {r.id: r.split for r in ds.load_named("eia_pairs")}
    assert {i for i in ids if i in pairs} == {i for i, s in pairs.items() if s == "test"}


def test_an_experiment_is_declared_in_full_before_it_runs():
    from emocircuits.protocol import Experiment

    exp = Experiment("modulation scale", discovery="sev_discovery, neutral events", candidates={"scale": (6.0, 8.0)},
                     rule="choose_strength: the smallest of the most accurate keeping >= 0.9 coherent",
                     test="sev_test, 16 scenarios")
    t = exp.table()
    assert t.loc["candidates", "modulation scale"] == "scale: 6, 8"
    assert t.loc["tuning judge", "modulation scale"].startswith("EmotionJudge")
    with pytest.raises(ValueError, match="'rule' must be declared"):
        Experiment("x", discovery="d", test="t")


def test_best_at_coherence_takes_the_most_accurate_setting_that_stays_coherent():
    import pandas as pd

    mod = pd.DataFrame({"accuracy": [0.58, 0.75, 0.83], "coherent": [0.96, 0.75, 0.71]}, index=[6, 8, 10])
    steer = pd.DataFrame({"accuracy": [0.33, 0.42], "coherent": [0.92, 0.92]}, index=[8, 16])
    t = choosing.best_at_coherence({"modulation": mod, "steering": steer})
    assert list(t.index) == [0.71, 0.75, 0.92, 0.96]
    assert t.loc[0.71].tolist() == [0.83, 0.42] and t.loc[0.92].tolist() == [0.58, 0.42]
    assert t.loc[0.96, "modulation"] == 0.58 and np.isnan(t.loc[0.96, "steering"])  # steering never reaches 0.96
    assert choosing.best_at_coherence({"m": mod}, levels=[0.8]).loc[0.8, "m"] == 0.58
    with pytest.raises(ValueError, match="tables\\['s'\\] needs rows with columns accuracy and coherent"):
        choosing.best_at_coherence({"s": pd.DataFrame({"accuracy": [0.1]})})


def test_reply_activations_average_the_reply_tokens_in_groups_of_one_context(tiny_llama, tmp_path, monkeypatch):
    """Section 8's variant: each emotion's i-th reply follows context i (wrapping); every site is the mean over the
    reply's tokens (checked against a direct capture), the six rows of a context are one group; bad input refused."""
    from emocircuits import datasets as ds

    monkeypatch.setenv("EMOCIRCUITS_CACHE", str(tmp_path))
    emos = list(ds.EMOTIONS)
    replies = ds.load_named("emotion_replies")
    recs = [r for e in emos for r in [x for x in replies if x.label == e][:2]]
    rec = [r for r in recs if r.label == "sadness"][1]  # row 7: sadness's second reply

    def reply_mean(context):
        """Row 7's value by hand: the mean over the reply's tokens, and over every token."""
        prompt = tiny_llama.chat_prompt(context)
        rows = capture(tiny_llama, [prompt, prompt + rec.text], ["mlp_act.1"], pooling="none", progress=False)
        return rows["mlp_act.1"][1][rows["mlp_act.1"][0].shape[0]:].mean(0), rows["mlp_act.1"][1].mean(0)

    contexts = ["How was your week?", "Tell me about your morning."]
    labels, groups, acts = emotion_acts.reply_activations(tiny_llama, recs, contexts, emos)
    assert labels == emos * 2 and groups == ["0"] * 6 + ["1"] * 6
    L = tiny_llama.n_layers
    assert set(acts) == set(emotion_acts.direction_sites(L)) | {f"{k}.{l}" for k in ("mlp_act", "attn_z") for l in range(L)}
    reply_only, whole = reply_mean(contexts[1])
    torch.testing.assert_close(acts["mlp_act.1"][7], reply_only, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(acts["mlp_act.1"][7], whole, atol=1e-3)  # the prompt's tokens are left out
    # one context for two replies per emotion: it wraps, both groups follow it
    _, groups1, acts1 = emotion_acts.reply_activations(tiny_llama, recs, contexts[:1], emos)
    assert groups1 == groups
    torch.testing.assert_close(acts1["mlp_act.1"][:6], acts["mlp_act.1"][:6], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(acts1["mlp_act.1"][7], reply_mean(contexts[0])[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="same number of replies"):
        emotion_acts.reply_activations(tiny_llama, recs[:-1], contexts, emos)
    with pytest.raises(ValueError, match="same number of replies"):
        emotion_acts.reply_activations(tiny_llama, recs, contexts, emos[:5])  # a label outside the emotions asked for
    with pytest.raises(ValueError, match="distinct emotion names"):
        emotion_acts.reply_activations(tiny_llama, recs, contexts, emos + ["fear"])
    with pytest.raises(ValueError, match="contexts: expected a list of user prompts, not one str"):
        emotion_acts.reply_activations(tiny_llama, recs, "How was your week?", emos)
    with pytest.raises(ValueError, match="contexts: expected a non-empty list"):
        emotion_acts.reply_activations(tiny_llama, recs, [], emos)
