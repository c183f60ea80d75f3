"""NDIF: nnsight's remote execution, tested offline through nnsight's own dry run of the remote path
(``remote="local"``: the trace and the library's code are serialised as for NDIF, where emocircuits is not
installed, and run here), and the errors a user without a key or a network gets."""

from __future__ import annotations

import copy

import pytest
import torch

from emocircuits import attribution as A
from emocircuits import training
from emocircuits import transcoders as T
from emocircuits.activations import capture
from emocircuits.cli import main
from emocircuits.generation import forward, generate
from emocircuits.interventions import Add, Transcode
from emocircuits.models import load_model
from emocircuits.registry import ModelError

from testkit import CORPUS


@pytest.fixture(scope="module")
def pair(tiny_llama):
    """The tiny model here, and the same weights behind nnsight's remote serialisation."""
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES

    from emocircuits.models import _ship_library

    sim = copy.copy(tiny_llama)
    sim.remote = "local"
    _ship_library()  # what load_model(..., remote=...) does: the server has no emocircuits
    yield tiny_llama, sim
    _PICKLE_BY_VALUE_MODULES.discard("emocircuits")  # the rest of the session pickles by reference


def test_remote_path_gives_what_the_local_run_gives(pair):
    lm, sim = pair
    sites = ["resid_post.1", "mlp_out.0", "attn_z.2"]
    a = capture(lm, CORPUS[:3], sites, pooling="mean_all", progress=False)
    b = capture(sim, CORPUS[:3], sites, pooling="mean_all", progress=False)
    for s in sites:
        torch.testing.assert_close(a[s], b[s])
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    for ivs in ([], [Add("resid_post.1", v, alpha=3.0)]):  # unsteered and steered generation
        assert generate(lm, CORPUS[:2], ivs, max_new_tokens=6) == generate(sim, CORPUS[:2], ivs, max_new_tokens=6)
    torch.testing.assert_close(forward(lm, CORPUS[:2], [Add("mlp_out.1", v, alpha=2.0)]),
                               forward(sim, CORPUS[:2], [Add("mlp_out.1", v, alpha=2.0)]))


def test_transcoder_interventions_ship_with_the_remote_request(pair, tmp_path):
    lm, sim = pair
    tset = training.train(lm, CORPUS, training.TrainSettings(n_features=32, k=4, epochs=1, batch_size=8), folder=tmp_path,
                   progress=False)
    clamp = [Transcode(tset[1], clamp={0: 5.0})]
    a = capture(lm, CORPUS[:2], ["mlp_out.1"], pooling="none", progress=False, interventions=clamp)
    b = capture(sim, CORPUS[:2], ["mlp_out.1"], pooling="none", progress=False, interventions=clamp)
    torch.testing.assert_close(a["mlp_out.1"][0], b["mlp_out.1"][0])


def test_remote_errors_name_what_is_missing(pair, monkeypatch):
    import nnsight

    with pytest.raises(ModelError, match="not a hub model"):
        load_model("smollm2-135m", remote=True)
    with pytest.raises(ValueError, match="remote='yes'"):
        load_model("smollm2-135m", remote="yes")
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    with pytest.raises(ModelError, match="NDIF_API_KEY"):
        load_model("llama-3.2-3b-instruct", remote=True)
    monkeypatch.setenv("NDIF_API_KEY", "not-a-real-key")
    monkeypatch.setattr(nnsight, "is_model_running", lambda repo: False)  # what it answers without a network
    with pytest.raises(ModelError, match="cannot be reached"):
        load_model("llama-3.2-3b-instruct", remote=True)
    # work that needs the weights here is refused on a remote model, by name
    lm, _ = pair
    far = copy.copy(lm)
    far.remote = True
    with torch.device("meta"):  # as LanguageModel(repo) leaves a remote model's weights
        far.hf = type(lm.hf)(lm.hf.config)
    assert next(far.hf.parameters()).device.type == "meta"
    assert far.device == torch.device("cpu")  # inputs go from the CPU, never to the meta device
    with pytest.raises(ModelError, match="an attribution graph reads"):
        A.prepare(far, T.TranscoderSet(), CORPUS[0])


def test_cli_remote_without_a_key_says_so(monkeypatch, tmp_path, capsys):
    import nnsight

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    rc = main(["probe", "--model", "llama-3.2-3b-instruct", "--remote", "--pairs", "data/eia_pairs.jsonl",
               "--out", str(tmp_path / "p")])
    assert rc == 2 and "NDIF_API_KEY" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
