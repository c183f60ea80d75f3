"""Steering sweeps, the honest success metric, vector export (chapter 06's tools)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emocircuits import choosing
from emocircuits import generation
from emocircuits import interventions
from emocircuits import steering as S
from emocircuits import vectors
from emocircuits.activations import capture
from emocircuits.cli import main

PROMPTS = [{"id": "a", "user": "My dog died."}, {"id": "b", "user": "I lost my job today.", "system": "Be brief."}]


def test_residual_rms_is_the_rms_of_every_real_token(tiny_llama):
    texts = ["hello there", "a much longer text with several more tokens in it"]
    rows = capture(tiny_llama, texts, ["resid_post.1"], pooling="none", progress=False)["resid_post.1"]
    expect = torch.cat(rows).pow(2).mean().sqrt()
    assert S.residual_rms(tiny_llama, texts, 1) == pytest.approx(float(expect), rel=1e-6)


def test_sweep_grid_baseline_and_rms_scaling(tiny_llama):
    v = torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(0))
    recs = S.sweep(tiny_llama, PROMPTS, v * 7, layers=[0, 1], alphas=[-2, 0, 2], max_new_tokens=6)
    assert len(recs) == 2 * 3 * 2
    plain = generation.generate(tiny_llama, [p["user"] for p in PROMPTS], max_new_tokens=6,
                       system=[p.get("system") for p in PROMPTS])
    assert [r["text"] for r in recs if r["alpha"] == 0 and r["layer"] == 0] == plain
    # the vector is normalised: the applied coefficient is alpha itself
    assert {r["coef"] for r in recs if r["alpha"] == 2} == {2.0}
    rms = S.residual_rms(tiny_llama, [tiny_llama.chat_prompt(PROMPTS[0]["user"])], 1)
    scaled = S.sweep(tiny_llama, PROMPTS[:1], v, layers=[1], alphas=[3], scale="rms", max_new_tokens=4)
    assert scaled[0]["coef"] == pytest.approx(3 * rms)
    direct = generation.generate(tiny_llama, [PROMPTS[0]["user"]], [interventions.Add("resid_post.1", v / v.norm(), 3 * rms)],
                        max_new_tokens=4)
    assert scaled[0]["text"] == direct[0]


def test_sweep_rejects_bad_settings(tiny_llama):
    v = torch.ones(tiny_llama.d_model)
    with pytest.raises(ValueError, match="scale='db'"):
        S.sweep(tiny_llama, PROMPTS, v, [0], [1], scale="db")
    with pytest.raises(ValueError, match="pass do_sample=True"):
        S.sweep(tiny_llama, PROMPTS, v, [0], [1], seeds=[0, 1])
    with pytest.raises(ValueError, match="positions='middle'"):
        S.sweep(tiny_llama, PROMPTS, v, [0], [1], positions="middle")


def _records(scores_by_alpha, seeds=(0, 1)):
    recs, scores = [], []
    for alpha, per_prompt in scores_by_alpha.items():
        for pid, vals in per_prompt.items():
            for seed, s in zip(seeds, vals):
                recs.append({"id": pid, "layer": 3, "alpha": alpha, "seed": seed})
                scores.append(s)
    return recs, scores


def test_success_needs_the_right_sign_beyond_noise_and_coherence():
    recs, scores = _records({
        0.0: {"p1": [3.0, 3.2], "p2": [2.0, 2.2], "p3": [4.0, 4.0]},
        5.0: {"p1": [4.0, 4.2], "p2": [2.1, 2.2], "p3": [4.9, 5.0]},  # p2 moves less than the noise
        -5.0: {"p1": [3.1, 3.2], "p2": [1.0, 1.1], "p3": [3.0, 3.1]},  # p1 moves the wrong way
    })
    coherent = [not (r["alpha"] == -5.0 and r["id"] == "p3" and r["seed"] == 1) for r in recs]  # one broken reply
    df = S.steering_success(recs, scores, coherent).set_index("alpha")
    # pooled seed-to-seed SD at alpha 0 is sqrt(mean(0.02, 0.02, 0)) = 0.1155; threshold 2 * SD / sqrt(2)
    assert df.loc[0.0, "threshold"] == pytest.approx(2 * np.sqrt(0.04 / 3) / np.sqrt(2))
    assert df.loc[5.0, "success"] == pytest.approx(2 / 3)  # p1 and p3
    assert df.loc[-5.0, "success"] == pytest.approx(1 / 3)  # p2 only: p1 wrong sign, p3 incoherent
    assert df.loc[-5.0, "coherent_share"] == pytest.approx(5 / 6)
    assert np.isnan(df.loc[0.0, "success"])
    with pytest.raises(ValueError, match="alpha = 0"):
        S.steering_success(recs[6:], scores[6:], coherent[6:])


def test_vector_and_control_vector_files_round_trip(tmp_path):
    v = torch.randn(16)
    path = vectors.save_vector(tmp_path / "v.safetensors", v, model="smollm2-135m", layer=4, pooling="mean_response",
                         dataset_hash="abc123")
    got, meta = vectors.load_vector(path)
    assert torch.equal(got, v)
    assert meta["model"] == "smollm2-135m" and meta["layer"] == "4" and meta["dataset_hash"] == "abc123"
    dirs = {1: torch.randn(16), 7: torch.randn(16)}
    vectors.export_control_vector(tmp_path / "cv.gguf", dirs, model_hint="llama")
    back, hint = vectors.load_control_vector(tmp_path / "cv.gguf")
    assert hint == "llama" and sorted(back) == [1, 7]
    assert all(torch.allclose(back[k], dirs[k]) for k in dirs)
    with pytest.raises(ValueError, match="start at layer 1"):
        vectors.export_control_vector(tmp_path / "bad.gguf", {0: torch.ones(4)}, "llama")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv.gguf", "v.safetensors"]
    with pytest.raises(ValueError, match="not a safetensors file"):
        vectors.load_vector(tmp_path / "cv.gguf")


def test_control_vector_file_is_what_llama_cpp_reads(tmp_path):
    """Read with gguf's own GGUFReader, not ours: what llama.cpp's control-vector loader checks (tensors named
    direction.L with L >= 1, one-dimensional float32 of one common length) and the metadata that repeng's
    writer sets beside them (architecture "controlvector", the model hint, the layer count)."""
    import gguf

    dirs = {12: torch.randn(48), 3: torch.randn(48, dtype=torch.float64), 1: np.linspace(-1, 1, 48)}
    path = vectors.export_control_vector(tmp_path / "cv.gguf", dirs, model_hint="gemma3")
    r = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert fields == {gguf.Keys.General.ARCHITECTURE: "controlvector", "controlvector.model_hint": "gemma3",
                      "controlvector.layer_count": 3}
    assert r.fields["controlvector.layer_count"].types == [gguf.GGUFValueType.UINT32]
    assert r.fields["GGUF.version"].contents() == gguf.GGUF_VERSION
    assert [t.name for t in r.tensors] == ["direction.1", "direction.3", "direction.12"]
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and t.data.dtype == np.float32
        assert list(t.shape) == [48] and t.n_elements == 48  # one dimension: d_model
        want = torch.as_tensor(dirs[int(t.name.split(".")[1])]).float().numpy()
        np.testing.assert_array_equal(np.asarray(t.data).reshape(-1), want)


def test_steer_cli_alpha_zero_is_plain_and_alpha_changes_the_reply(smol, tmp_path):
    from emocircuits.datasets import DATA_DIR

    probe = tmp_path / "probe"
    assert main(["probe", "--pairs", str(DATA_DIR / "eia_pairs.jsonl"), "--out", str(probe), "--layers", "3",
                 "--pooling", "mean_response"]) == 0
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "x", "prompt": "My dog died."}) + "\n")
    outs = {}
    for alpha in (0, 40):
        out = tmp_path / f"out{alpha}.jsonl"
        assert main(["steer", "--probe", str(probe), "--alpha", str(alpha), "--prompts", str(src), "--out", str(out),
                     "--max-new-tokens", "16"]) == 0
        (rec,) = [json.loads(l) for l in out.read_text().splitlines()]
        assert set(rec) == {"id", "alpha", "layer", "text"} and rec["layer"] == 3
        outs[alpha] = rec["text"]
    assert outs[0] == generation.generate(smol, ["My dog died."], max_new_tokens=16)[0]
    assert outs[40] != outs[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    assert main(["steer", "--probe", str(probe), "--alpha", "1", "--prompts", str(bad),
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    assert not (tmp_path / "o.jsonl").exists()


def test_steer_cli_takes_a_saved_vector_with_its_recorded_setting_or_a_control_vector(smol, tmp_path, capsys):
    """``--vector``: a save_vector file steers at the layer, scale, positions and alpha it records (what chapter
    06 saves), unless flags override them; a control-vector GGUF adds alpha x each listed direction, as llama.cpp
    does. Both equal the library calls they stand for."""
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "x", "prompt": "My dog died."}) + "\n")
    v = torch.randn(smol.d_model, generator=torch.Generator().manual_seed(0))
    vec = vectors.save_vector(tmp_path / "v.safetensors", v, model="smollm2-135m", layer=5, scale="rms",
                        positions="generated", alpha="0.5")

    def steer(*flags):
        out = tmp_path / "out.jsonl"
        assert main(["steer", *flags, "--prompts", str(src), "--out", str(out), "--max-new-tokens", "12"]) == 0
        (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
        return rec

    rec = steer("--vector", str(vec))
    want = S.sweep(smol, [{"id": "x", "user": "My dog died."}], v, [5], [0.5], scale="rms", positions="generated",
                   max_new_tokens=12)[0]
    assert (rec["layer"], rec["alpha"], rec["text"]) == (5, 0.5, want["text"])
    assert steer("--vector", str(vec), "--alpha", "0")["text"] == generation.generate(smol, ["My dog died."],
                                                                              max_new_tokens=12)[0]
    gg = vectors.export_control_vector(tmp_path / "v.gguf", {3: v, 7: -v}, model_hint="llama")
    rec = steer("--vector", str(gg), "--alpha", "2")
    ivs = [interventions.Add("resid_post.3", v, alpha=2.0), interventions.Add("resid_post.7", -v, alpha=2.0)]
    assert rec["layer"] == [3, 7] and rec["text"] == generation.generate(smol, ["My dog died."], ivs, max_new_tokens=12)[0]
    for flags, msg in ((["--vector", str(gg)], "records no strength"), (["--vector", str(tmp_path / "no.gguf")],
                       "no such file"), (["--alpha", "1"], "exactly one of --probe"),
                       (["--vector", str(gg), "--alpha", "1", "--layer", "4"], "has layers [3, 7]")):
        capsys.readouterr()
        assert main(["steer", *flags, "--prompts", str(src), "--out", str(tmp_path / "o.jsonl")]) == 2, flags
        assert msg in capsys.readouterr().err and not (tmp_path / "o.jsonl").exists()


def _both_records(rows):
    """rows: (id, alpha, seed, score, coherent[, positions])."""
    recs = [{"id": r[0], "layer": 2, "alpha": r[1], "seed": r[2], "positions": r[5] if len(r) > 5 else "all"}
            for r in rows]
    return recs, [r[3] for r in rows], [r[4] for r in rows]


def test_both_ways_counts_prompts_moved_in_both_directions_per_positions():
    rows = []
    for i, (down, base, up) in enumerate([(1, 2, 3), (2, 3, 4), (0, 1, 5), (3, 2, 4)]):  # the last rises at -a
        for seed in (0, 1):
            rows += [(f"p{i}", 0.0, seed, base, True), (f"p{i}", -1.0, seed, down, True),
                     (f"p{i}", 1.0, seed, up, seed == 0)]
            # the same prompts pushed at generated positions only: only p0 moves both ways
            rows += [(f"p{i}", -1.0, seed, down if i == 0 else base + 1, True, "generated"),
                     (f"p{i}", 1.0, seed, up, True, "generated")]
    t = S.both_ways(*_both_records(rows), n_perm=50).set_index("positions")
    assert t.loc["all", "share"] == pytest.approx(0.75) and t.loc["generated", "share"] == pytest.approx(0.25)
    assert t.loc["all", "coherent_share"] == pytest.approx(12 / 16)  # +1 at seed 1 is incoherent
    assert t.loc["all", "score_0"] == pytest.approx(2.0) and t.loc["all", "score_up"] == pytest.approx(4.0)
    assert not t.meets_goal.any()
    assert (t.prompts == 4).all() and (t.share_lo <= t.share).all() and (t.share <= t.share_hi).all()
    table = S.both_ways(*_both_records(rows), n_perm=10)
    best = choosing.best_setting(table, ["sit-heldout-01", "sit-heldout-02"], min_coherent=0.9)
    assert best.positions == "generated"  # 'all' moves more prompts but breaks a quarter of its replies
    # a setting is never chosen on test situations, nor on situations it cannot name
    with pytest.raises(ValueError, match=r"best_setting: 1 record\(s\) of a test split .*sit-confirm-03"):
        choosing.best_setting(table, ["sit-heldout-01", "sit-confirm-03"])
    for bad in ([], ["sit-heldout-01", ""], ["sit-heldout-01", None]):
        with pytest.raises(ValueError, match="best_setting: (no record ids|record id missing at positions)"):
            choosing.best_setting(table, bad)
    with pytest.raises(ValueError, match="expected a list of record ids"):
        choosing.best_setting(table, "sit-heldout-01")
    ss = S.steering_success(*_both_records(rows)).set_index(["positions", "alpha"])
    assert ss.loc[("generated", 1.0), "success"] == 1.0  # same alpha = 0 baseline for every positions
    assert ss.loc[("generated", -1.0), "success"] == pytest.approx(0.25)
    assert ss.loc[("all", 1.0), "success"] == 0.0  # every prompt has an incoherent reply at +1
    assert ("generated", 0.0) not in ss.index and ss.loc[("all", 0.0), "score"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="layer 2 has no alpha = 0"):
        S.both_ways(*_both_records([r for r in rows if r[1] != 0]))


def test_unit_and_rms_alphas_at_one_layer_are_separate_settings_with_one_baseline():
    """Paper A's unit alpha 1 and paper B's RMS alpha 1 are different pushes; their alpha = 0 replies coincide."""
    rows, scales = [], []
    for i in range(4):
        for seed in (0, 1):
            for scale in ("unit", "rms"):  # both sweeps generated their own (identical) alpha = 0 replies
                rows.append((f"p{i}", 0.0, seed, 2.0 + 0.2 * seed, True))
                scales.append(scale)
            rows += [(f"p{i}", -1.0, seed, 2.0, True), (f"p{i}", 1.0, seed, 2.0, True)]  # unit: too weak to act
            scales += ["unit", "unit"]
            rows += [(f"p{i}", -1.0, seed, 1.0, True), (f"p{i}", 1.0, seed, 3.0 if i else 2.0, True)]
            scales += ["rms", "rms"]
    recs, scores, coherent = _both_records(rows)
    for r, sc in zip(recs, scales):
        r["scale"] = sc
    t = S.both_ways(recs, scores, coherent, n_perm=20).set_index("scale")
    assert t.loc["unit", "share"] == 0.0 and t.loc["rms", "share"] == pytest.approx(0.75)
    assert (t.prompts == 4).all()
    ss = S.steering_success(recs, scores, coherent).set_index(["scale", "alpha"])
    assert ss.loc[("rms", 1.0), "success"] == pytest.approx(0.75) and ss.loc[("unit", 1.0), "success"] == 0.0
    assert ss.loc[("any", 0.0), "score"] == pytest.approx(2.1) and len(ss) == 5  # one baseline row
    # kept once: two seeds' SD 0.141 -> 2 x 0.141 / sqrt(2); counted twice it would be 0.115
    assert ss.loc[("any", 0.0), "threshold"] == pytest.approx(0.2)


def test_both_ways_chance_is_one_in_six_without_an_effect():
    rng = np.random.default_rng(1)
    rows = [(f"p{i}", a, s, float(rng.normal()), True) for i in range(300) for a in (-2.0, 0.0, 2.0) for s in (0, 1)]
    t = S.both_ways(*_both_records(rows), n_perm=40, seed=3)
    assert t.chance.iat[0] == pytest.approx(1 / 6, abs=0.02)
    assert t.share.iat[0] == pytest.approx(1 / 6, abs=0.07)
    assert t.share_lo.iat[0] < 1 / 6 < t.share_hi.iat[0]
    again = S.both_ways(*_both_records(rows), n_perm=40, seed=3)
    assert again.equals(t)


def test_a_judged_sweep_carries_each_prompt_and_the_judges_reading(tiny_llama):
    from scipy.stats import spearmanr

    v = torch.ones(tiny_llama.d_model)
    judge = lambda texts, users: ([float(len(t)) for t in texts], [True] * len(texts))  # noqa: E731
    recs, scores, coherent = S.judged_sweep(tiny_llama, PROMPTS, v, [0], [-4, 0, 4], judge, max_new_tokens=5)
    plain = S.sweep(tiny_llama, PROMPTS, v, [0], [-4, 0, 4], max_new_tokens=5)
    assert [r["text"] for r in recs] == [r["text"] for r in plain]
    assert [r["user"] for r in recs] == [{p["id"]: p["user"] for p in PROMPTS}[r["id"]] for r in recs]
    assert scores == [float(len(r["text"])) for r in recs] and coherent == [True] * len(recs)
    again = lambda texts, users: [-float(len(t)) + len(u) for t, u in zip(texts, users)]  # noqa: E731
    share, rho = S.second_reading((recs, scores, coherent), again, seed=3)
    second = again([r["text"] for r in recs], [r["user"] for r in recs])
    assert share == S.both_ways(recs, second, coherent, seed=3).iloc[0].share
    assert np.isclose(rho, spearmanr(second, scores)[0], equal_nan=True)
