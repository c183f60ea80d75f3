"""Per-layer transcoders: sparse, wide stand-ins for each MLP (chapter 05).

A transcoder for layer ``L`` reads ``mlp_in.L`` (the residual stream after
the pre-MLP norm) and predicts ``mlp_out.L`` (what the MLP adds to the
residual stream) through ``n_features`` features of which at most ``k`` are
non-zero per token::

    pre = x @ W_enc.T + b_enc          # [tokens, n_features]
    f   = activation(pre)              # top-k of ReLU (ours), JumpReLU or ReLU (published sets)
    y   = f @ W_dec + b_dec            # [tokens, d_model]
        (+ x @ W_skip.T)               # optional linear skip connection

Ours keep every decoder row at unit norm in the model's units, so a
feature's activation is the length of what it writes into the residual
stream (clamping a feature to 10 adds a vector of norm 10). They have a
linear skip connection by default ("skip transcoders"): the part of the MLP
that is linear in its input needs no features, which leaves the features
for the rest. Training fits the skip first, in closed form (ridge
regression from ``mlp_in`` to ``mlp_out`` on the first batches), and the
features then learn what that linear map leaves; a skip learned by
gradient descent from zero, with the features, lags a least-squares map for
the whole of a short run. The skip is a linear path like attention's OV
circuit, so the attribution graph stays exact with it.

Training is in :mod:`.training`, measures of fidelity in :mod:`.fidelity`.

Files: one ``layer_{L}.safetensors`` per layer with the config as JSON in the
metadata, written atomically. Published transcoder sets in circuit-tracer's
layout (per-layer safetensors with ``W_enc [F, d]``, ``W_dec [F, d]``,
``b_enc``, ``b_dec`` and optional ``activation_function.threshold``) and
GemmaScope ``.npz`` files load through :func:`load_layer_file`; whole
published sets, per-layer or cross-layer, from a folder or a hub id, through
:mod:`emocircuits.published`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .datasets import DATA_DIR
from .interventions import Transcode
from .sites import Site, read_site
from .cache import atomic_write, atomic_write_text

ACTIVATIONS = ("topk", "jumprelu", "relu")
INPUT_SITES = ("mlp_in", "resid_mid")


class TranscoderError(ValueError):
    """A transcoder file or argument that cannot be used; the message says what is accepted."""


@dataclass
class TranscoderConfig:
    d_model: int
    n_features: int
    layer: int
    k: int | None = 32
    activation: str = "topk"
    model: str = ""
    input_site: str = "mlp_in"
    output_site: str = "mlp_out"
    tokens_seen: int = 0
    seed: int = 0
    corpus: str = ""
    source: str = "trained here"
    skip: bool = False
    # output layers the features write to: this layer and the reach - 1 after it (a cross-layer transcoder's
    # features reach to the model's last layer; a per-layer transcoder's reach is 1)
    reach: int = 1
    topk_relu: bool = True  # ours take the ReLU of the k largest; circuit-tracer's TopK keeps their signs

    def __post_init__(self):
        if self.input_site not in INPUT_SITES:
            raise TranscoderError(f"input_site={self.input_site!r}: expected one of {', '.join(INPUT_SITES)}")
        if not isinstance(self.reach, int) or self.reach < 1:
            raise TranscoderError(f"reach={self.reach!r}: expected an int >= 1 (1 for a per-layer transcoder)")
        if self.activation not in ACTIVATIONS:
            raise TranscoderError(f"activation={self.activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        if self.activation == "topk" and (not isinstance(self.k, int) or not 1 <= self.k <= self.n_features):
            raise TranscoderError(f"k={self.k!r}: expected an int in 1..n_features={self.n_features} for top-k")
        if self.n_features < 1 or self.d_model < 1:
            raise TranscoderError(f"n_features={self.n_features}, d_model={self.d_model}: expected positive sizes")


class Transcoder(torch.nn.Module):
    """One layer's transcoder (see the module docstring for the maths)."""

    def __init__(self, cfg: TranscoderConfig):
        super().__init__()
        self.cfg = cfg
        F, d = cfg.n_features, cfg.d_model
        self.W_enc = torch.nn.Parameter(torch.zeros(F, d))
        self.b_enc = torch.nn.Parameter(torch.zeros(F))
        self.W_dec = torch.nn.Parameter(torch.zeros(F, d))
        self.b_dec = torch.nn.Parameter(torch.zeros(d))
        self.register_buffer("threshold", torch.zeros(F))
        self.W_skip = torch.nn.Parameter(torch.zeros(d, d)) if cfg.skip else None
        # a cross-layer transcoder's decoders into the reach - 1 layers after its own, [n_features, reach - 1, d]
        self.W_dec_cross = torch.nn.Parameter(torch.zeros(F, cfg.reach - 1, d)) if cfg.reach > 1 else None

    @property
    def layer(self) -> int:
        return self.cfg.layer

    def writes_to(self, layer: int) -> bool:
        return self.cfg.layer <= layer < self.cfg.layer + self.cfg.reach

    def decoder(self, layer: int) -> torch.Tensor:
        """``[n_features, d_model]``: what each feature writes into ``mlp_out`` of ``layer``."""
        if not self.writes_to(layer):
            raise TranscoderError(f"the transcoder of layer {self.cfg.layer} (reach {self.cfg.reach}) "
                                  f"does not write to layer {layer}")
        return self.W_dec if layer == self.cfg.layer else self.W_dec_cross[:, layer - self.cfg.layer - 1]

    def preacts(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.W_enc.dtype) @ self.W_enc.T + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.cfg.activation == "relu":
            return torch.relu(pre)
        if self.cfg.activation == "jumprelu":
            return pre * (pre > self.threshold)
        vals, idx = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals) if self.cfg.topk_relu else vals)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., n_features]``."""
        return self.activate(self.preacts(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """What the features (and the bias) write; the skip term is :meth:`skip_term`."""
        return f @ self.W_dec + self.b_dec

    def skip_term(self, x: torch.Tensor) -> torch.Tensor:
        if self.W_skip is None:
            return torch.zeros(*x.shape[:-1], self.cfg.d_model, dtype=self.W_dec.dtype, device=x.device)
        return x.to(self.W_skip.dtype) @ self.W_skip.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)) + self.skip_term(x)

    # ---- files
    def state(self) -> dict[str, torch.Tensor]:
        out = {k: v.detach().cpu().contiguous() for k, v in
               (("W_enc", self.W_enc), ("b_enc", self.b_enc), ("W_dec", self.W_dec), ("b_dec", self.b_dec))}
        if self.cfg.activation == "jumprelu":
            out["activation_function.threshold"] = self.threshold.detach().cpu().contiguous()
        if self.W_skip is not None:
            out["W_skip"] = self.W_skip.detach().cpu().contiguous()
        if self.W_dec_cross is not None:
            out["W_dec_cross"] = self.W_dec_cross.detach().cpu().contiguous()
        return out

    def save(self, path) -> Path:
        """Write ``path`` (safetensors, config in the metadata) atomically."""
        from safetensors.torch import save_file

        meta = {"emocircuits_transcoder": json.dumps(asdict(self.cfg))}
        return atomic_write(path, lambda p: save_file(self.state(), str(p), metadata=meta))

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], cfg: TranscoderConfig) -> "Transcoder":
        tc = cls(cfg)
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(tc, name).copy_(state[name])
            if "activation_function.threshold" in state:
                tc.threshold.copy_(state["activation_function.threshold"])
            if tc.W_skip is not None:
                tc.W_skip.copy_(state["W_skip"])
            if tc.W_dec_cross is not None:
                tc.W_dec_cross.copy_(state["W_dec_cross"])
        tc.requires_grad_(False)
        return tc


def load_layer_file(path, layer: int | None = None, k: int | None = None, model: str = "",
                    input_site: str = "mlp_in", activation: str | None = None) -> Transcoder:
    """Load one layer's transcoder: ours, circuit-tracer's safetensors (GemmaScope 2's lower-case keys too),
    or a GemmaScope ``.npz``.

    Published files carry no config; ``layer`` (and ``k`` for a top-k set, ``activation`` where the set's
    config names one) say what the file does not. A published top-k set keeps the signs of its k largest
    pre-activations, as circuit-tracer's ``TopK`` does.
    """
    path = Path(path)
    if not path.is_file():
        raise TranscoderError(f"transcoder file {str(path)!r} does not exist")
    meta: dict = {}
    if path.suffix == ".npz":
        raw = dict(np.load(path))
        need = {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
        if not need <= set(raw):
            raise TranscoderError(f"{path.name}: a GemmaScope .npz needs keys {sorted(need)}, found {sorted(raw)}")
        state = {"W_enc": torch.from_numpy(raw["W_enc"]).T.contiguous().float(),
                 "W_dec": torch.from_numpy(raw["W_dec"]).float(), "b_enc": torch.from_numpy(raw["b_enc"]).float(),
                 "b_dec": torch.from_numpy(raw["b_dec"]).float(),
                 "activation_function.threshold": torch.from_numpy(raw["threshold"]).float()}
    elif path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {key: fh.get_tensor(key).float() for key in fh.keys()}
        if "w_enc" in state:  # GemmaScope 2: w_enc [d, F], affine_skip_connection applied as x @ A
            state = {"W_enc": state["w_enc"].T.contiguous(), "W_dec": state["w_dec"], "b_enc": state["b_enc"],
                     "b_dec": state["b_dec"], **({"activation_function.threshold": state["threshold"]}
                                                 if "threshold" in state else {}),
                     **({"W_skip": state["affine_skip_connection"].T.contiguous()}
                        if "affine_skip_connection" in state else {})}
    else:
        raise TranscoderError(f"{path.name}: expected a .safetensors or .npz transcoder file")
    if "emocircuits_transcoder" in meta:
        cfg = TranscoderConfig(**json.loads(meta["emocircuits_transcoder"]))
    else:
        missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - set(state)
        if missing:
            raise TranscoderError(f"{path.name}: missing tensors {sorted(missing)}; expected W_enc, W_dec, b_enc, b_dec")
        if layer is None:
            raise TranscoderError(f"{path.name} has no emocircuits config: pass layer=")
        F, d = state["W_enc"].shape
        if "k" in state:
            k = int(state.pop("k"))
        act = activation or ("jumprelu" if "activation_function.threshold" in state else ("topk" if k else "relu"))
        if act == "jumprelu" and "activation_function.threshold" not in state:
            raise TranscoderError(f"{path.name}: a JumpReLU transcoder needs activation_function.threshold")
        cfg = TranscoderConfig(d_model=d, n_features=F, layer=layer, k=k if act == "topk" else None, activation=act,
                               model=model, input_site=input_site, source=str(path), skip="W_skip" in state,
                               topk_relu=False)
    if state["W_enc"].shape != state["W_dec"].shape:
        raise TranscoderError(f"{path.name}: W_enc {tuple(state['W_enc'].shape)} and W_dec "
                              f"{tuple(state['W_dec'].shape)} should both be [n_features, d_model]")
    return Transcoder.from_state(state, cfg)


class TranscoderSet(dict):
    """``{layer: Transcoder}`` with directory save/load."""

    def save(self, folder) -> Path:
        folder = Path(folder)
        for layer, tc in self.items():
            tc.save(folder / f"layer_{layer}.safetensors")
        atomic_write_text(folder / "config.json", json.dumps(
            {"layers": sorted(self), "config": asdict(next(iter(self.values())).cfg)}, indent=1))
        return folder

    @classmethod
    def load(cls, folder, layers: Iterable[int] | None = None) -> "TranscoderSet":
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise TranscoderError(f"{str(folder)!r} holds no transcoder set (no config.json)")
        info = json.loads((folder / "config.json").read_text())
        wanted = sorted(layers) if layers is not None else info["layers"]
        missing = [layer for layer in wanted if layer not in info["layers"]]
        if missing:
            raise TranscoderError(f"layers {missing} are not in {folder}; it has {info['layers']}")
        return cls({layer: load_layer_file(folder / f"layer_{layer}.safetensors") for layer in wanted})

    @property
    def input_site(self) -> str:
        """The site every transcoder of the set reads (``mlp_in`` or ``resid_mid``)."""
        sites = {tc.cfg.input_site for tc in self.values()}
        if len(sites) != 1:
            raise TranscoderError(f"the transcoders of a set must read one site; these read {sorted(sites)}")
        return sites.pop()

    @property
    def cross_layer(self) -> bool:
        return any(tc.cfg.reach > 1 for tc in self.values())

    def writers(self, layer: int) -> list[int]:
        """The layers whose features write into ``mlp_out`` of ``layer`` (just ``layer`` for a per-layer set)."""
        return [la for la in sorted(self) if self[la].writes_to(layer)]

    def reconstruct(self, layer: int, feats: dict[int, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The set's prediction of ``mlp_out`` at ``layer`` from every writer's features and the layer's input."""
        tc = self[layer]
        out = tc.b_dec + tc.skip_term(x)
        for la in self.writers(layer):
            out = out + feats[la] @ self[la].decoder(layer)
        return out

    def splices(self) -> list:
        """Interventions that replace every MLP by the set's prediction (each with its cross-layer writers)."""
        return [Transcode(self[la], splice=True, feeds=tuple(self[w] for w in self.writers(la) if w != la))
                for la in sorted(self)]

    def check(self, lm) -> "TranscoderSet":
        """Raise unless every transcoder fits ``lm`` (width and layer range)."""
        self.input_site  # one input site
        for layer, tc in self.items():
            if tc.cfg.d_model != lm.d_model:
                raise TranscoderError(f"transcoder of layer {layer} has d_model={tc.cfg.d_model}; "
                                      f"{lm.name} has {lm.d_model}")
            if not 0 <= layer < lm.n_layers:
                raise TranscoderError(f"transcoder layer {layer} out of range for {lm.name} (0..{lm.n_layers - 1})")
            if layer + tc.cfg.reach > lm.n_layers:
                raise TranscoderError(f"transcoder of layer {layer} writes to {tc.cfg.reach} layers; "
                                      f"{lm.name} has {lm.n_layers}")
        return self


# ---------------------------------------------------------------------------
# the training corpus


# Data files the transcoder corpus leaves out: chapter 03's lexical stress
# pairs exist to test one probe, chapter 06's confirmation situations
# must stay unseen by everything but the one check they were written for,
# and chapter 04's emotion replies serve one variant of that chapter.
# Leaving them out also keeps the corpus (and the transcoders cached on it)
# what it was before they were written.
# Evaluation-only files, and the emotion judges' corpora added after chapter 05's transcoders were
# settled (the emotion and empathy judges' files of 2026-12-06 and 2026-12-07): the transcoders read what they
# read before.
CORPUS_EXCLUDE = frozenset({"eia_lexical", "eia_matched", "situations_confirm", "emotion_replies",
                            "judge_emotion_registers", "judge_emotion_chat", "judge_emotion_fresh",
                            "judge_empathy_heldout", "eia_rubric_train", "eia_rubric_heldout",
                            "judge_emotion_bundled", "judge_empathy_registers", "judge_empathy_fresh",
                            "judge_empathy_voices", "judge_empathy_assistant"})


def project_corpus(lm, replies: Sequence[tuple[str, str]] = (), data_dir=None) -> list[str]:
    """Every text of the project's data files, in the shapes the chapters show the model.

    Situation/reply records and held-out situations become chat turns (so the
    transcoders see the chat template), SEV records become scenario + event
    sentences, other text fields are used as they are. ``replies`` adds
    ``(user, reply)`` pairs the model generated itself. Sorted by file and line,
    so the list (and its hash) is the same on every machine. Files in
    :data:`CORPUS_EXCLUDE` (evaluation-only stress tests) are left out.
    """
    folder = Path(data_dir) if data_dir is not None else DATA_DIR
    out: list[str] = []
    for path in sorted(folder.glob("*.jsonl")):
        if path.stem in CORPUS_EXCLUDE:
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if "situation" in rec and "reply" in rec:
                out.append(lm.chat_prompt(rec["situation"]) + rec["reply"])
            elif "scenario" in rec and all(k in rec for k in ("positive", "neutral", "negative")):
                out.extend(f"{rec['scenario']} {rec[k]}" for k in ("positive", "neutral", "negative"))
            elif path.stem.startswith("situations") and "text" in rec:
                out.append(lm.chat_prompt(rec["text"]))
            else:
                out.extend(v for k, v in sorted(rec.items()) if isinstance(v, str) and len(v) > 20 and k != "id")
    out.extend(lm.chat_prompt(user) + reply for user, reply in replies)
    return out


# ---------------------------------------------------------------------------
# activations of the MLPs, streamed


def mlp_io(lm, texts: Sequence[str], layers: Sequence[int], max_length: int = 128, input_site: str = "mlp_in"):
    """``({layer: input}, {layer: mlp_out}, mask, input_ids)`` of one batch, ``[B, T, d]`` on the model's device.

    ``input_site`` is what the transcoders read: ``mlp_in`` (ours) or ``resid_mid`` (some published sets).
    """
    if input_site not in INPUT_SITES:
        raise TranscoderError(f"input_site={input_site!r}: expected one of {', '.join(INPUT_SITES)}")
    enc = {k: v.to(lm.device) for k, v in lm.encode(list(texts), padding_side="right", max_length=max_length).items()}
    got_in, got_out = {}, {}
    with torch.inference_mode(), lm.nn.trace(enc, **lm.remote_kwargs) as tracer:
        for layer in layers:
            got_in[layer] = read_site(lm, Site(input_site, layer)).save()
            got_out[layer] = read_site(lm, Site("mlp_out", layer)).save()
        tracer.stop()
    return got_in, got_out, enc["attention_mask"].bool(), enc["input_ids"]


def first_left_out(mask: torch.Tensor) -> torch.Tensor:
    """The mask of a right-padded batch without each text's first token.

    The first token is an attention sink whose MLP output is tens to
    thousands of times larger than any other's (on smollm2-135m it carries
    99.7% of the variance of the last MLP's output): left in, it would
    dominate training and make every variance-explained number a statement
    about one token. Transcoders neither learn nor replace it; attribution
    graphs give it to the error node.
    """
    mask = mask.clone()
    mask[:, 0] = False
    return mask


def text_batches(texts: Sequence[str], batch_size: int, seed: int) -> list[list[str]]:
    """Seeded batches of texts of similar length (less padding), in a seeded order."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    chunk = batch_size * 8
    batches = []
    for j in range(0, len(order), chunk):
        part = sorted(order[j:j + chunk], key=lambda i: (len(texts[i] if isinstance(texts[i], str) else texts[i][0]), i))
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return [[texts[i] for i in batches[b]] for b in rng.permutation(len(batches))]
