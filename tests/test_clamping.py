"""Paper C's clamps (chapter 05) on a tiny model: the final prompt token only, per-prompt circuits, union and
intersection, controls, the feelings rule and the next-token effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emocircuits import attribution as A
from emocircuits import clamping as C
from emocircuits import features
from emocircuits import training
from emocircuits.activations import capture
from emocircuits.generation import forward, generate
from emocircuits.interventions import Transcode
from emocircuits.judges import LABELS

from testkit import CORPUS

SETTINGS = dict(n_features=96, k=8, epochs=2, batch_size=8)


@pytest.fixture(scope="module")
def tset(tiny_llama, tmp_path_factory):
    return training.train(tiny_llama, CORPUS, training.TrainSettings(**SETTINGS), folder=tmp_path_factory.mktemp("tc"),
                   progress=False)


def test_a_last_prompt_clamp_moves_the_final_prompt_token_and_nothing_generated(tiny_llama, tset):
    la, text = 1, CORPUS[2]
    site = f"mlp_out.{la}"
    base = capture(tiny_llama, [text], [site], pooling="none", progress=False)[site][0]
    iv = Transcode(tset[la], clamp={3: 5.0}, positions="last_prompt")
    got = capture(tiny_llama, [text], [site], pooling="none", progress=False, interventions=[iv])[site][0]
    torch.testing.assert_close(got[:-1], base[:-1])  # every earlier position untouched
    assert not torch.allclose(got[-1], base[-1])
    # in generation it acts once, in the first pass: the same replies as a clamp of the prompt's last
    # position alone, and different from a clamp that also acts on every generated token
    prompts = CORPUS[:3]
    once = generate(tiny_llama, prompts, [iv], max_new_tokens=6, chat=False)
    every = generate(tiny_llama, prompts, [Transcode(tset[la], clamp={3: 5.0}, positions="last:1")],
                     max_new_tokens=6, chat=False)
    plain = generate(tiny_llama, prompts, max_new_tokens=6, chat=False)
    assert once != every and once != plain


def test_clamps_set_each_feature_to_a_value_or_a_multiple_of_its_maximum(tset):
    feats = [(0, 2), (0, 5), (2, 7)]
    max_act = {la: np.arange(tset[la].cfg.n_features, dtype=float) for la in tset}
    ivs = C.clamps(tset, feats, relative=4, max_act=max_act)
    assert [(iv.transcoder.cfg.layer, iv.clamp, iv.positions) for iv in ivs] == [
        (0, {2: 8.0, 5: 20.0}, "last_prompt"), (2, {7: 28.0}, "last_prompt")]
    ivs = C.clamps(tset, feats, value=100, positions="all")
    assert all(set(iv.clamp.values()) == {100.0} and iv.positions == "all" for iv in ivs)
    max_act[0][2] = 0.0  # a feature that never fired is set to the multiple itself
    assert C.clamps(tset, [(0, 2)], relative=4, max_act=max_act)[0].clamp == {2: 4.0}
    with pytest.raises(ValueError, match="one of them"):
        C.clamps(tset, feats, value=1, relative=1, max_act=max_act)
    with pytest.raises(ValueError, match="max_act"):
        C.clamps(tset, feats, relative=1)
    with pytest.raises(ValueError, match="empty circuit"):
        C.clamps(tset, [], value=1)
    with pytest.raises(ValueError, match="positions="):
        C.clamps(tset, feats, value=1, positions="final")


def test_controls_match_layers_and_size_and_avoid_the_circuit(tset):
    feats = [(0, 2), (0, 5), (2, 7)]
    ctl = C.control(tset, feats, seed=3)
    assert sorted(la for la, _ in ctl) == [0, 0, 2] and not set(ctl) & set(feats) and len(set(ctl)) == 3
    assert ctl == C.control(tset, feats, seed=3) and ctl != C.control(tset, feats, seed=4)
    # given each feature's largest activation, only features that fired are drawn
    alive = {la: torch.zeros(tset[la].cfg.n_features) for la in tset}
    for la in alive:
        alive[la][[1, 3, 8, 9]] = 1.0
    for seed in range(5):
        ctl = C.control(tset, feats, seed=seed, max_act=alive)
        assert {f for _, f in ctl} <= {1, 3, 8, 9} and not set(ctl) & set(feats)
    alive[2][:] = 0.0
    with pytest.raises(ValueError, match="layer 2 has 0 live features"):
        C.control(tset, feats, max_act=alive)


def test_per_prompt_circuits_union_and_intersection(tiny_llama, tset):
    circuits = []
    for text in CORPUS[:3]:
        ctx = A.prepare(tiny_llama, tset, text)
        nodes = ctx.feature_nodes()
        low = [(la, f) for la, p, f, _ in nodes if la == 0]
        pc = C.grow_for_prompt(tiny_llama, tset, text, ranked=low[:1], top_layer=0, k=2, steps=2, ctx=ctx)
        assert pc.seeded_by == "persistent" and pc.seed[::2] == low[0] and pc.steps[0][0][:3] == pc.seed
        assert all(la > 0 for nodes_ in pc.steps[1:] for la, *_ in nodes_)  # growth goes downstream
        circuits.append(pc)
    # nothing ranked is active: the seed is the graph's top feature at or below the top layer
    pc = C.grow_for_prompt(tiny_llama, tset, CORPUS[0], ranked=[], top_layer=1, k=2, steps=1)
    assert pc.seeded_by == "graph" and pc.seed[0] <= 1
    u, i = C.union(circuits), C.intersection(circuits)
    assert set(i) <= set(u) and set().union(*(c.features for c in circuits)) == set(u)
    assert all(set(i) <= set(c.features) for c in circuits) and C.intersection([]) == []


class _StubJudge:
    """Reads a window as emotional when it holds a given word (the rule's arithmetic, not a model)."""

    def __init__(self, word):
        self.word = word

    def predict_proba(self, texts):
        p = np.zeros((len(texts), len(LABELS)))
        for r, t in enumerate(texts):
            p[r, LABELS.index("sadness" if self.word in t else "neutral")] = 1.0
        return p


def test_about_feelings_keeps_features_whose_top_windows_read_as_emotional(tiny_llama, tset):
    feats = [(1, f) for f in range(12)]
    ctxs = features.top_contexts(tiny_llama, tset, feats, CORPUS, top=3, width=12)
    word = next(c["token"].strip() for n in feats for c in ctxs[n] if c["token"].strip())
    kept = C.about_feelings(tiny_llama, tset, feats, CORPUS, _StubJudge(word), top=3, width=12, threshold=0.5)
    want = [n for n in feats if ctxs[n] and np.mean([word in (c["before"] + c["token"]) for c in ctxs[n]]) >= 0.5]
    assert kept == want and kept
    assert C.about_feelings(tiny_llama, tset, [], CORPUS, _StubJudge(word)) == []


def test_logit_effects_name_what_a_clamp_promotes_and_are_zero_without_one(tiny_llama, tset):
    texts = CORPUS[:2]
    strong = [C.clamps(tset, [(2, 1), (2, 4)], value=50.0)] * 2
    eff = C.logit_effects(tiny_llama, texts, {"none": [[], []], "strong": strong}, top=3)
    assert eff["none"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert eff["strong"]["kl"] > 1e-3 and len(eff["strong"]["promoted"]) == 3
    assert eff["strong"]["promoted"][0][1] > 0 > eff["strong"]["suppressed"][0][1]
    # rows of different lengths share a batch, each with its own clamps: the same as one text at a time
    one = C.logit_effects(tiny_llama, texts, {"first only": [strong[0], []]})["first only"]["kl_each"]
    alone = C.logit_effects(tiny_llama, texts[:1], {"first": [strong[0]]})["first"]["kl_each"]
    assert one[1] == pytest.approx(0.0, abs=1e-6) and one[0] == pytest.approx(alone[0], rel=1e-3)
    # a text that sits a condition out is left out of its mean, not counted as unmoved
    part = C.logit_effects(tiny_llama, texts, {"first": [strong[0], None]})["first"]["kl_each"]
    assert part == pytest.approx(alone, rel=1e-3)
    with pytest.raises(ValueError, match="acts on no text"):
        C.logit_effects(tiny_llama, texts, {"none": [None, None]})
    with pytest.raises(ValueError, match="2 texts"):
        C.logit_effects(tiny_llama, texts, {"bad": [[]]})


def test_an_every_position_clamp_leaves_each_rows_first_token_alone_under_left_padding(tiny_llama, tset):
    """In a left-padded batch the short row's first real token is the attention sink, not column 0: an
    every-position clamp or splice gives that row the logits it gets alone (no padding), token for token."""
    short, long_ = CORPUS[0], CORPUS[1] + " " + CORPUS[2]
    n = len(tiny_llama.encode([short])["input_ids"][0])
    for iv in (Transcode(tset[1], clamp={3: 5.0}, positions="all"), Transcode(tset[2], splice=True)):
        batch = forward(tiny_llama, [short, long_], [iv])
        alone = forward(tiny_llama, [short], [iv])
        torch.testing.assert_close(batch[0, -n:], alone[0], rtol=1e-4, atol=1e-4)
        assert not torch.allclose(alone[0], forward(tiny_llama, [short])[0], atol=1e-3)  # it does act


def test_a_final_token_clamp_refuses_a_right_padded_batch(tiny_llama, tset):
    texts = [CORPUS[0], CORPUS[1] + " " + CORPUS[2]]
    for positions in ("last_prompt", "last:2"):
        iv = Transcode(tset[1], clamp={3: 5.0}, positions=positions)
        with pytest.raises(ValueError, match="left-padded"):
            forward(tiny_llama, texts, [iv], padding_side="right")
        forward(tiny_llama, texts, [iv])  # left padding (the default) is fine
    forward(tiny_llama, texts, [Transcode(tset[1], clamp={3: 5.0}, positions="all")], padding_side="right")
