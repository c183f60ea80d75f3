"""The same checks on a CUDA device, in float32 and bfloat16 (skipped without a GPU).

CI has no GPU; run this where one is (Colab, or the project's GPU machine):
``python -m pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

from emocircuits.activations import all_layers, capture
from emocircuits.generation import forward, generate
from emocircuits.interventions import Add
from emocircuits.models import load_model
from emocircuits.registry import REGISTRY

from testkit import hand_run_from, make_tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module", params=["llama", "gemma"])
def tiny_cuda(request, tmp_path_factory):
    name = make_tiny(tmp_path_factory.mktemp(f"gpu-{request.param}"), request.param, name=f"gpu-{request.param}")
    yield name
    REGISTRY.pop(name, None)


def test_hub_models_default_to_bfloat16_on_cuda(tiny_cuda):
    lm = load_model(tiny_cuda, device="cuda")
    assert lm.device.type == "cuda" and lm.dtype == torch.bfloat16
    got = capture(lm, ["My dog died.", "I got the job! We celebrate tonight."], ["resid_post.1", "mlp_act.2"],
                  progress=False)
    assert got["resid_post.1"].device.type == "cpu" and got["resid_post.1"].dtype == torch.float32
    assert torch.isfinite(got["mlp_act.2"]).all()


def test_capture_matches_hidden_states_on_cuda(tiny_cuda):
    lm = load_model(tiny_cuda, device="cuda", dtype=torch.float32)
    texts = ["My dog died this morning.", "Tell me about your weekend, and what made you happy."]
    enc = {k: v.cuda() for k, v in lm.encode(texts).items()}
    with torch.inference_mode():
        hs = lm.hf(**enc, output_hidden_states=True).hidden_states
    got = capture(lm, texts, all_layers("resid_post", lm.n_layers), pooling="none", progress=False)
    real = enc["attention_mask"].bool()
    for L in range(lm.n_layers - 1):
        for r in range(2):
            assert torch.allclose(got[f"resid_post.{L}"][r], hs[L + 1][r][real[r]].cpu(), atol=1e-4)


def test_steering_on_cuda(tiny_cuda):
    lm = load_model(tiny_cuda, device="cuda", dtype=torch.float32)
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    prompts = ["My dog died.", "Could you help me plan a party?"]
    plain = generate(lm, prompts, max_new_tokens=12, return_ids=True)
    assert plain == generate(lm, prompts, [Add("resid_post.1", v, alpha=0.0)], max_new_tokens=12, return_ids=True)
    text = "I got the job! We are going to celebrate tonight."
    ours = forward(lm, [text], [Add("resid_post.0", v, alpha=3.0)])[0]
    ref = hand_run_from(lm, text, 0, (3.0 * v).cuda())[0].float().cpu()
    assert torch.allclose(ours, ref, atol=1e-3, rtol=1e-4)
