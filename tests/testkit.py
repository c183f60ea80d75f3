"""Tiny random-weight models of each architecture, built in memory (no downloads, no bundled files).

They go through the same ``load_model`` path as the papers' hub models: the
model and a tokenizer trained here on a few sentences are saved to a local
folder, which a registry entry of source "hub" names in place of a hub id.
"""

from __future__ import annotations

from pathlib import Path

import torch

from emocircuits.registry import ModelSpec, register_model

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

CORPUS = [
    "My dog died this morning and I cannot stop crying.",
    "I got the job! We are going to celebrate tonight.",
    "The weather turned cold overnight and the lake froze.",
    "Could you help me plan a birthday party for my grandmother?",
    "Tell me about your weekend, and what made you happy.",
] * 20


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


# each of the papers' model classes, at a tiny size, with the quirk that sets it apart kept
TINY_KINDS = ("llama", "gemma", "llama3", "qwen2", "phi3", "gemma2")


def make_tiny(folder: Path, arch: str, name: str | None = None) -> str:
    """Save a random 3-layer model and register it; returns its name. ``arch`` is one of :data:`TINY_KINDS`:

    - ``llama``: LlamaForCausalLM (SmolLM2's class);
    - ``gemma``: Gemma3ForCausalLM with sliding and full attention layers;
    - ``llama3``: LlamaForCausalLM as Llama 3.2 has it: tied embeddings, llama3 rope scaling;
    - ``qwen2``: Qwen2ForCausalLM, with its q/k/v biases;
    - ``phi3``: Phi3ForCausalLM, with q/k/v and gate/up fused;
    - ``gemma2``: Gemma2ForCausalLM with attention and final-logit soft-capping and alternating sliding windows.

    The registry entry's layout is read from the saved model's class, as a user's own model's would be.
    """
    import transformers as tf

    from emocircuits.registry import layout_of

    if arch not in TINY_KINDS:
        raise ValueError(f"arch={arch!r}: expected one of {TINY_KINDS}")
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=tok.pad_token_id,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if arch == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    elif arch == "llama3":  # initializer_range 0.2: with tied embeddings and near-zero layers the model would
        # repeat its last prompt token (a newline) forever, and every greedy reply would be blank
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common, tie_word_embeddings=True, initializer_range=0.2, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}))
        assert model.lm_head.weight is model.model.embed_tokens.weight
    elif arch == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))
        assert model.model.layers[0].self_attn.v_proj.bias is not None
    elif arch == "phi3":
        model = tf.Phi3ForCausalLM(tf.Phi3Config(**{k: v for k, v in common.items() if k != "head_dim"}))
    elif arch == "gemma2":
        model = tf.Gemma2ForCausalLM(tf.Gemma2Config(**common, sliding_window=8, query_pre_attn_scalar=16,
                                                     final_logit_softcapping=2.0, attn_logit_softcapping=5.0))
    else:
        model = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**common, sliding_window=8, layer_types=[
            "sliding_attention", "sliding_attention", "full_attention"]))
    if arch in ("qwen2", "phi3", "gemma2"):  # random biases and norm weights: zero ones would hide a missed term
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("bias") or "norm" in n:
                    p.add_(0.1 * torch.randn_like(p))
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    name = name or f"tiny-{arch}"  # the layout read from the saved class, as a user's own model's is
    register_model(ModelSpec(name, "hub", str(folder), layout_of(model.config), 3, 64, 0.0001, True))
    return name


def hand_run_from(lm, text, layer, v):
    """Logits from running layers layer+1.. by hand on resid_post.layer + v."""
    enc = {k: t.to(lm.device) for k, t in lm.encode([text]).items()}
    kwargs = {}
    hooks = [lm.hf_layer(i).register_forward_pre_hook(
        lambda mod, args, kw, i=i: kwargs.__setitem__(i, kw), with_kwargs=True) for i in range(lm.n_layers)]
    try:
        with torch.inference_mode():
            hs = lm.hf(**enc, output_hidden_states=True, use_cache=False).hidden_states
    finally:
        for h in hooks:
            h.remove()
    with torch.inference_mode():
        h = hs[layer + 1] + v
        for i in range(layer + 1, lm.n_layers):
            h = lm.hf_layer(i)(h, **kwargs[i])
        logits = lm.hf.lm_head(lm.hf.model.norm(h))
        cap = getattr(lm.config, "final_logit_softcapping", None)  # Gemma 2
        return cap * torch.tanh(logits / cap) if cap else logits


def write_tiny_set(folder: Path, lm, kind: str = "transcoder_set", input_hook: str = "mlp.hook_in",
                   n_features: int = 48, seed: int = 0) -> Path:
    """A random transcoder set for ``lm`` written by hand in circuit-tracer's format (not through the
    library's writer), so the loader is tested against the format itself.

    ``kind``: ``transcoder_set`` (per-layer files with a JumpReLU threshold and a skip, listed in the
    config), ``cross_layer_transcoder`` (``W_enc_i`` / ``W_dec_i`` files, JumpReLU) or ``gemma_scope_2_clt``
    (a cross-layer set as GemmaScope 2 keeps it: one listed file per layer, lower-case keys, an affine skip). Weights are scaled
    so that a good share of features fire on the tiny models' activations.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    L, d, F = lm.n_layers, lm.d_model, n_features
    for la in range(L):
        W_enc = torch.randn(F, d, generator=g) / d ** 0.5
        b_enc = 0.1 * torch.randn(F, generator=g)
        b_dec = 0.05 * torch.randn(d, generator=g)
        thr = 0.2 * torch.rand(F, generator=g)
        if kind == "gemma_scope_2_clt":  # one file per layer, lower-case keys, w_dec over every layer, a skip
            save_file({"w_enc": W_enc.T.contiguous(), "w_dec": 0.1 * torch.randn(F, L, d, generator=g), "b_enc": b_enc,
                       "b_dec": b_dec, "threshold": thr, "affine_skip_connection": 0.05 * torch.randn(d, d, generator=g)},
                      str(folder / f"params_{la}.safetensors"))
        elif kind == "cross_layer_transcoder":
            W_dec = 0.1 * torch.randn(F, L - la, d, generator=g)
            save_file({f"W_enc_{la}": W_enc, f"b_enc_{la}": b_enc, f"b_dec_{la}": b_dec, f"threshold_{la}": thr},
                      str(folder / f"W_enc_{la}.safetensors"))
            save_file({f"W_dec_{la}": W_dec}, str(folder / f"W_dec_{la}.safetensors"))
        else:
            save_file({"W_enc": W_enc, "W_dec": 0.1 * torch.randn(F, d, generator=g), "b_enc": b_enc, "b_dec": b_dec,
                       "activation_function.threshold": thr, "W_skip": 0.05 * torch.randn(d, d, generator=g)},
                      str(folder / f"layer_{la}.safetensors"))
    lines = [f"model_kind: {'cross_layer_transcoder' if kind == 'gemma_scope_2_clt' else kind}",
             f"model_name: {lm.name}", f"feature_input_hook: {input_hook}", "feature_output_hook: hook_mlp_out"]
    if kind == "transcoder_set":
        lines += ["transcoders:"] + [f"  - layer_{la}.safetensors" for la in range(L)]
    if kind == "gemma_scope_2_clt":
        lines += ["transcoders:"] + [f"  - params_{la}.safetensors" for la in range(L)]
    (folder / "config.yaml").write_text("\n".join(lines) + "\n")
    return folder
