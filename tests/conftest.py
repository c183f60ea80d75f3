"""Shared fixtures: the two bundled models (loaded once) and tiny random models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from emocircuits.models import ModelSpec, load_model, register_model, REGISTRY, converted_dir, get_spec  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smol():
    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def gemma():
    return load_model("gemma3-270m", device="cpu")


@pytest.fixture(scope="session", params=["smollm2-135m", "gemma3-270m"])
def bundled(request, smol, gemma):
    return smol if request.param == "smollm2-135m" else gemma


def _tiny(tmp_path_factory, arch: str):
    """A random-weight model of the given layout, saved as a local hub-style folder."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(converted_dir(get_spec("smollm2-135m"))))
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=tok.pad_token_id,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, sliding_window=8, layer_types=[
            "sliding_attention", "sliding_attention", "full_attention"]))
    folder = tmp_path_factory.mktemp(f"tiny-{arch}")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    name = f"tiny-{arch}"
    register_model(ModelSpec(name, "hub", str(folder), arch, 3, 64, 0.001, True))
    return name


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smol):
    name = _tiny(tmp_path_factory, "llama")
    yield load_model(name, device="cpu")
    REGISTRY.pop(name, None)


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory, smol):
    name = _tiny(tmp_path_factory, "gemma")
    yield load_model(name, device="cpu")
    REGISTRY.pop(name, None)
