"""Every architecture of the papers' models, proven on tiny random-weight models without a GPU.

``tiny_arch`` (conftest) runs each test on Llama, Llama 3 (tied embeddings, rope scaling), Qwen2 (q/k/v
biases), Phi-3 (fused projections), Gemma 2 (soft-capping, post-norms) and Gemma 3. The hand computations
here are written from each model class's own maths, not from the library's layout table, so a wrong entry
in the table fails them. Neuron and head contributions, sublayer influence and attribution graphs run on
every architecture through the ``tiny`` fixtures of test_circuits.py and test_attribution.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from emocircuits import registry
from emocircuits.activations import capture
from emocircuits.generation import forward, generate
from emocircuits.interventions import Add, Scale, Set
from emocircuits.models import load_model
from emocircuits.registry import ModelError

from testkit import TINY_KINDS, hand_run_from, make_tiny

TEXTS = ["My dog died this morning.", "I got the job! We are going to celebrate tonight."]
KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_in", "mlp_act", "mlp_out", "resid_post", "attn_z")


def _rms(norm, x, offset):
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (offset + norm.weight)


def _hand_mlp_act(lm, layer: int, mlp_in: torch.Tensor) -> torch.Tensor:
    """act(gate(x)) * up(x), from the MLP's own weights (Phi-3 keeps gate and up in one projection)."""
    mlp = lm.hf_layer(layer).mlp
    if hasattr(mlp, "gate_up_proj"):
        gate, up = mlp.gate_up_proj(mlp_in).chunk(2, dim=-1)
        return mlp.activation_fn(gate) * up
    return mlp.act_fn(mlp.gate_proj(mlp_in)) * mlp.up_proj(mlp_in)


def test_every_site_reads_what_the_block_computes(tiny_arch):
    lm = tiny_arch
    got = capture(lm, TEXTS[:1], [f"{k}.{la}" for la in range(lm.n_layers) for k in KINDS], pooling="none",
                  progress=False)
    g = {k: v[0] for k, v in got.items()}  # [tokens, width]
    enc = lm.encode(TEXTS[:1])
    with torch.inference_mode():
        hs = lm.hf(**enc, output_hidden_states=True, use_cache=False).hidden_states
    gemma = "Gemma" in type(lm.hf).__name__
    offset = 1.0 if gemma else 0.0
    close = dict(atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(g["resid_pre.0"], hs[0][0], **close)  # the embedding as the model scales it
    for la in range(lm.n_layers):
        block = lm.hf_layer(la)
        # the residual stream: before + attention = middle; middle + MLP = after; after = next block's input
        torch.testing.assert_close(g[f"resid_pre.{la}"] + g[f"attn_out.{la}"], g[f"resid_mid.{la}"], **close)
        torch.testing.assert_close(g[f"resid_mid.{la}"] + g[f"mlp_out.{la}"], g[f"resid_post.{la}"], **close)
        if la + 1 < lm.n_layers:
            torch.testing.assert_close(g[f"resid_post.{la}"], hs[la + 1][0], **close)
        with torch.inference_mode():
            # the MLP reads the normed middle of the block (Gemma: its pre-feedforward norm)
            mid_norm = block.pre_feedforward_layernorm if gemma else block.post_attention_layernorm
            torch.testing.assert_close(g[f"mlp_in.{la}"], _rms(mid_norm, g[f"resid_mid.{la}"], offset), **close)
            torch.testing.assert_close(g[f"mlp_act.{la}"], _hand_mlp_act(lm, la, g[f"mlp_in.{la}"]), **close)
            mlp_out = block.mlp.down_proj(g[f"mlp_act.{la}"])
            attn_out = block.self_attn.o_proj(g[f"attn_z.{la}"])
            if gemma:  # each sublayer's output is normed before it joins the residual stream
                mlp_out = _rms(block.post_feedforward_layernorm, mlp_out, offset)
                attn_out = _rms(block.post_attention_layernorm, attn_out, offset)
        torch.testing.assert_close(g[f"mlp_out.{la}"], mlp_out, **close)
        torch.testing.assert_close(g[f"attn_out.{la}"], attn_out, **close)
    assert g["attn_z.0"].shape[-1] == lm.n_heads * lm.head_dim


def _hooked_logits(lm, text, module, edit):
    """The model's logits with ``edit(input)`` replacing ``module``'s input (a plain torch hook)."""
    h = module.register_forward_pre_hook(lambda mod, args: (edit(args[0].clone()),) + args[1:])
    try:
        with torch.inference_mode():
            return lm.hf(**lm.encode([text]), use_cache=False).logits[0]
    finally:
        h.remove()


def test_each_intervention_kind_matches_a_hand_run(tiny_arch):
    lm = tiny_arch
    text, la = TEXTS[1], 1
    plain = forward(lm, [text])[0]
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1)) * 3
    ours = forward(lm, [text], [Add(f"resid_post.{la}", v, alpha=2.0)])[0]
    torch.testing.assert_close(ours, hand_run_from(lm, text, la, 2.0 * v)[0], atol=1e-4, rtol=1e-4)
    block = lm.hf_layer(la)

    def zero_neurons(x):
        x[..., [3, 17]] = 0.0
        return x
    ours = forward(lm, [text], [Set(f"mlp_act.{la}", [3, 17], 0.0)])[0]
    torch.testing.assert_close(ours, _hooked_logits(lm, text, block.mlp.down_proj, zero_neurons), atol=1e-4,
                               rtol=1e-4)

    hd = lm.head_dim

    def scale_head(x):
        x[..., 2 * hd:3 * hd] *= 3.0
        return x
    ours = forward(lm, [text], [Scale(f"attn_z.{la}", [2], 3.0)])[0]
    torch.testing.assert_close(ours, _hooked_logits(lm, text, block.self_attn.o_proj, scale_head), atol=1e-4,
                               rtol=1e-4)
    assert (ours - plain).abs().max() > 1e-3  # each edit matters


def test_steered_generation_runs_batched_and_matches_one_at_a_time(tiny_arch):
    lm = tiny_arch
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(2)) * 4
    push = [Add("resid_post.1", v, alpha=1.0)]
    both = generate(lm, TEXTS, push, max_new_tokens=6, batch_size=2)
    alone = [generate(lm, [t], push, max_new_tokens=6, batch_size=1)[0] for t in TEXTS]
    plain = generate(lm, TEXTS, max_new_tokens=6, batch_size=2)
    assert both == alone  # left padding changes nothing
    assert both != plain


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_a_saved_model_folder_loads_with_its_layout_read_from_its_class(kind, tmp_path):
    make_tiny(tmp_path / kind, kind, name=f"registered-{kind}")
    lm = load_model(str(tmp_path / kind), device="cpu")  # by folder, as a user's own model
    want = {"phi3": "phi3", "gemma": "gemma", "gemma2": "gemma"}.get(kind, "llama")
    assert lm.arch == want and lm.name == str(tmp_path / kind) and lm.n_layers == 3
    assert lm.logit_softcap == (2.0 if kind == "gemma2" else None)
    registry.REGISTRY.pop(str(tmp_path / kind))
    registry.REGISTRY.pop(f"registered-{kind}")


def test_models_that_cannot_load_are_named_with_what_is_accepted(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ModelError, match=r"unsupported architecture GPT2LMHeadModel; supported classes: "
                                         r"LlamaForCausalLM.*Phi3ForCausalLM"):
        load_model(str(tmp_path / "gpt2"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="has no config.json"):
        load_model(str(tmp_path / "empty"), device="cpu")
    with pytest.raises(ModelError, match=r"unknown model 'nope'.*local folder or a hub id"):
        load_model("nope", device="cpu")
    # a registry entry whose declared layout disagrees with the class it loads is refused
    make_tiny(tmp_path / "phi", "phi3", name="mislabelled")
    registry.register_model(registry.ModelSpec("mislabelled", "hub", str(tmp_path / "phi"), "llama", 3, 64, 1e-4, True))
    with pytest.raises(ModelError, match=r"is a Phi3ForCausalLM, whose layout is phi3; its entry says 'llama'"):
        load_model("mislabelled", device="cpu")
    registry.REGISTRY.pop("mislabelled")
    registry.REGISTRY.pop(str(tmp_path / "phi"), None)


@pytest.mark.parametrize("kind", ["phi3", "gemma2"])
def test_the_probe_command_takes_a_model_folder(kind, tmp_path):
    from emocircuits.cli import main
    from emocircuits.datasets import DATA_DIR
    from emocircuits.probes import load_probe

    make_tiny(tmp_path / kind, kind, name=f"cli-{kind}")
    out = tmp_path / "probe"
    assert main(["probe", "--model", str(tmp_path / kind), "--pairs", str(DATA_DIR / "eia_pairs.jsonl"),
                 "--out", str(out), "--layers", "0,2"]) == 0
    probe = load_probe(out)
    assert probe.model == str(tmp_path / kind) and set(probe.layers) == {0, 2}
    assert json.loads((out / "metrics.json").read_text())["best_layer"] in (0, 2)
    registry.REGISTRY.pop(str(tmp_path / kind), None)
    registry.REGISTRY.pop(f"cli-{kind}", None)
