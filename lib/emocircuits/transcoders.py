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
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .datasets import DATA_DIR
from .interventions import Set, Transcode, apply_all, resolve
from .sites import Site, read_site
from .cache import atomic_write, atomic_write_text, cache_dir, code_version, stable_hash
from .profiling import timed

ACTIVATIONS = ("topk", "jumprelu", "relu")
DENSE = 0.1  # a feature on at more than this share of tokens counts as dense in quality()
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


def _batches(texts: Sequence[str], batch_size: int, seed: int) -> list[list[str]]:
    """Seeded batches of texts of similar length (less padding), in a seeded order."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    chunk = batch_size * 8
    batches = []
    for j in range(0, len(order), chunk):
        part = sorted(order[j:j + chunk], key=lambda i: (len(texts[i] if isinstance(texts[i], str) else texts[i][0]), i))
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return [[texts[i] for i in batches[b]] for b in rng.permutation(len(batches))]


# ---------------------------------------------------------------------------
# training


@dataclass
class TrainSettings:
    n_features: int = 2048
    k: int = 32
    epochs: int = 2
    batch_size: int = 16
    max_length: int = 128
    lr: float = 2e-3
    lr_decay: float = 0.0  # the last fraction of the steps, over which the learning rate falls linearly to 0
    aux_k: int = 256
    aux_coef: float = 1 / 32
    dead_after_tokens: int = 20_000
    seed: int = 0
    checkpoint_every: int = 25
    skip: bool = True
    # the first ``skip_fit`` of the first epoch's batches fit the skip in closed form (ridge regression from
    # mlp_in to mlp_out) before any feature trains; the features then learn what that linear map leaves.
    # 0: the skip is learned by gradient descent with the features. ``ridge`` is the penalty in tokens per input
    # dimension (lambda = ridge * d_model * the inputs' mean square): it matters only when the fit sees few tokens
    skip_fit: float = 0.2
    ridge: float = 0.3
    step_tokens: int = 128  # tokens per optimiser step (a batch's tokens, shuffled, in steps of this size)
    layers: list[int] | None = field(default=None)


def _sparse_decode(idx: torch.Tensor, vals: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """``sum_j vals[t, j] * W_dec[idx[t, j]]`` per token: a top-k decoder's output without the dense product."""
    return torch.nn.functional.embedding_bag(idx, W_dec, mode="sum", per_sample_weights=vals)


class _Trainer:
    """Trains one transcoder per layer in the normalised space, then folds the scales out."""

    def __init__(self, lm, st: TrainSettings, corpus_hash: str, n_batches: int):
        self.st = st
        self.n_batches = n_batches
        self.fits_skip = st.skip and st.skip_fit > 0
        # batches of the first epoch that only gather the skip's statistics (a one-epoch run keeps at least one
        # for the features; a run of a single batch fits the skip on it and then trains the features on it)
        cap = n_batches - 1 if st.epochs == 1 and n_batches > 1 else n_batches
        self.skip_batches = min(cap, max(1, math.ceil(st.skip_fit * n_batches))) if self.fits_skip else 0
        self.layers = list(st.layers) if st.layers is not None else list(range(lm.n_layers))
        g = torch.Generator().manual_seed(st.seed)
        d, F = lm.d_model, st.n_features
        self.params: dict[int, dict[str, torch.Tensor]] = {}
        for layer in self.layers:
            W_dec = torch.randn(F, d, generator=g)
            W_dec /= W_dec.norm(dim=1, keepdim=True)
            W_enc = torch.randn(F, d, generator=g) / math.sqrt(d)
            init = {"W_enc": W_enc, "b_enc": torch.zeros(F), "W_dec": W_dec, "b_dec": torch.zeros(d)}
            if st.skip:
                init["W_skip"] = torch.zeros(d, d)
            self.params[layer] = {n: t.requires_grad_(n != "W_skip" or not self.fits_skip) for n, t in init.items()}
        self.opt = {layer: torch.optim.Adam([t for t in p.values() if t.requires_grad], lr=st.lr)
                    for layer, p in self.params.items()}
        # least-squares statistics of the skip fit, [x, 1]^T [x, 1] and [x, 1]^T y in the normalised space
        self.gram = {layer: torch.zeros(d + 1, d + 1, dtype=torch.float64) for layer in self.layers}
        self.cross = {layer: torch.zeros(d + 1, d, dtype=torch.float64) for layer in self.layers}
        self.scale_in = {layer: 0.0 for layer in self.layers}
        self.scale_out = {layer: 0.0 for layer in self.layers}
        # with a fitted skip, the features learn (y - skip - intercept) / scale_res, in the normalised space;
        # scale_res (the leftover's size, fixed from the first feature batch) keeps their targets at unit scale
        self.intercept = {layer: torch.zeros(d) for layer in self.layers}
        self.scale_res = {layer: 0.0 if self.fits_skip else 1.0 for layer in self.layers}
        self.last_fired = {layer: torch.zeros(F, dtype=torch.long) for layer in self.layers}
        self.tokens = 0
        self.step = 0
        self.epoch = 0
        self.history: list[dict] = []
        self.lm_name, self.d_model, self.corpus_hash = lm.name, d, corpus_hash

    def lr_at(self, step: int) -> float:
        """The learning rate of ``step``: ``lr``, then a linear decay to 0 over the last ``lr_decay`` of the steps."""
        st = self.st
        total = st.epochs * self.n_batches
        start = total * (1.0 - st.lr_decay)
        if st.lr_decay <= 0 or step < start:
            return st.lr
        return st.lr * max(0.0, (total - step) / (total - start))

    # ---- one batch
    def train_batch(self, xin: dict, xout: dict, mask: torch.Tensor) -> dict:
        m = first_left_out(mask).reshape(-1)
        n_tok = int(m.sum())
        xs, ys = {}, {}
        for layer in self.layers:
            x = xin[layer].reshape(-1, self.d_model)[m].float().cpu()
            y = xout[layer].reshape(-1, self.d_model)[m].float().cpu()
            if self.scale_in[layer] == 0.0:  # fixed from the first batch: mean squared norm -> d_model
                self.scale_in[layer] = float(x.pow(2).sum(-1).mean().sqrt()) / math.sqrt(self.d_model)
                self.scale_out[layer] = float(y.pow(2).sum(-1).mean().sqrt()) / math.sqrt(self.d_model)
                if not self.fits_skip:
                    with torch.no_grad():
                        self.params[layer]["b_dec"].copy_(y.mean(0) / self.scale_out[layer])
            xs[layer], ys[layer] = x / self.scale_in[layer], y / self.scale_out[layer]
        if self.step < self.skip_batches:  # the skip fit's batches: statistics only
            for layer in self.layers:
                x1 = torch.cat([xs[layer], torch.ones(n_tok, 1)], 1)
                self.gram[layer] += (x1.T @ x1).double()
                self.cross[layer] += (x1.T @ ys[layer]).double()
            if self.step + 1 == self.skip_batches:
                self._solve_skip()
            if not (self.step + 1 == self.n_batches and self.st.epochs == 1):
                self.tokens += n_tok
                self.step += 1
                row = {"step": self.step, "tokens": self.tokens, "fve_mean": float("nan")}
                self.history.append(row)
                return row
        st = self.st
        lr = self.lr_at(self.step)
        order = torch.randperm(n_tok, generator=torch.Generator().manual_seed(st.seed * 1_000_003 + self.step))
        chunks = order.split(st.step_tokens) if st.step_tokens > 0 else (order,)
        fve = {}
        for layer in self.layers:
            p, sse, sst = self.params[layer], 0.0, 0.0
            for group in self.opt[layer].param_groups:
                group["lr"] = lr
            seen = self.tokens
            x_all, y_all = xs[layer], ys[layer]
            if self.fits_skip:  # the features learn what the fitted linear map leaves
                with torch.no_grad():
                    y_all = y_all - x_all @ p["W_skip"].T - self.intercept[layer]
                if self.scale_res[layer] == 0.0:
                    self.scale_res[layer] = float(y_all.pow(2).sum(-1).mean().sqrt()) / math.sqrt(self.d_model)
                y_all = y_all / self.scale_res[layer]
            for rows in chunks:
                err, var = self._step(layer, x_all[rows], y_all[rows], seen)
                seen += len(rows)
                sse, sst = sse + err, sst + var
            fve[layer] = 1.0 - sse / max(sst, 1e-12)
        self.tokens += n_tok
        self.step += 1
        row = {"step": self.step, "tokens": self.tokens, "fve_mean": float(np.mean(list(fve.values())))}
        self.history.append(row)
        return row

    def _step(self, layer: int, x: torch.Tensor, y: torch.Tensor, seen: int) -> tuple[float, float]:
        """One optimiser step of one layer on ``x -> y`` (normalised); its squared error and variance summed."""
        st, p = self.st, self.params[layer]
        pre = x @ p["W_enc"].T + p["b_enc"]
        vals, idx = pre.topk(st.k, dim=-1)
        f_vals = torch.relu(vals)
        # the decoder reads only the k chosen rows per token (an embedding bag), not a dense [tokens, F] product
        y_hat = _sparse_decode(idx, f_vals, p["W_dec"]) + p["b_dec"]
        if "W_skip" in p and not self.fits_skip:
            y_hat = y_hat + x @ p["W_skip"].T
        var = (y - y.mean(0)).pow(2).sum(-1).mean()
        loss = (y_hat - y).pow(2).sum(-1).mean() / var
        fired = torch.zeros(st.n_features, dtype=torch.bool)
        fired[idx[f_vals > 0]] = True
        self.last_fired[layer][fired] = seen + len(x)
        dead = (seen + len(x) - self.last_fired[layer]) > st.dead_after_tokens
        total = loss
        if dead.any() and st.aux_k > 0:  # AuxK: dead features learn to explain what the live ones miss
            kk = min(st.aux_k, int(dead.sum()))
            av, ai = pre.masked_fill(~dead, float("-inf")).topk(kk, dim=-1)
            err = (y - y_hat).detach()
            aux_hat = _sparse_decode(ai, torch.relu(av), p["W_dec"])
            aux = (aux_hat - err).pow(2).sum(-1).mean() / err.pow(2).sum(-1).mean().clamp_min(1e-8)
            total = loss + st.aux_coef * torch.nan_to_num(aux)
        self.opt[layer].zero_grad()
        total.backward()
        self.opt[layer].step()
        with torch.no_grad():
            p["W_dec"] /= p["W_dec"].norm(dim=1, keepdim=True).clamp_min(1e-8)
        n = len(x)
        return loss.item() * var.item() * n, var.item() * n

    def _solve_skip(self) -> None:
        """The ridge-regression skip of every layer, and its intercept, from the gathered statistics."""
        d = self.d_model
        for layer in self.layers:
            g = self.gram[layer]
            per_token = float(g.diagonal()[:d].mean() / g[d, d])  # the inputs' mean square per dimension
            ridge = self.st.ridge * d * per_token * torch.eye(d + 1, dtype=g.dtype)
            ridge[d, d] = 0.0  # the intercept is not shrunk
            sol = torch.linalg.solve(g + ridge, self.cross[layer])  # [d + 1, d]
            with torch.no_grad():
                self.params[layer]["W_skip"].copy_(sol[:d].T.float())
            self.intercept[layer] = sol[d].float()
            self.gram[layer], self.cross[layer] = None, None

    # ---- results
    def transcoders(self) -> TranscoderSet:
        out = TranscoderSet()
        for layer in self.layers:
            p = {n: t.detach() for n, t in self.params[layer].items()}
            si, so, rho = self.scale_in[layer], self.scale_out[layer], self.scale_res[layer] or 1.0
            cfg = TranscoderConfig(d_model=self.d_model, n_features=self.st.n_features, layer=layer, k=self.st.k,
                                   model=self.lm_name, tokens_seen=self.tokens, seed=self.st.seed,
                                   corpus=self.corpus_hash, skip=self.st.skip)
            # y = so * (x / si @ W_skip.T + intercept + rho * (f @ W_dec + b_dec)) in the model's units; with
            # f' = so * rho * f the decoder rows stay unit norm there
            g = so * rho
            state = {"W_enc": p["W_enc"] * (g / si), "b_enc": p["b_enc"] * g,
                     "W_dec": p["W_dec"].clone(), "b_dec": so * (self.intercept[layer] + rho * p["b_dec"])}
            if "W_skip" in p:
                state["W_skip"] = p["W_skip"] * (so / si)
            out[layer] = Transcoder.from_state(state, cfg)
        return out

    # ---- checkpoints (safetensors + JSON metadata)
    def save_checkpoint(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            for n, t in self.params[layer].items():
                tensors[f"{layer}.{n}"] = t.detach().contiguous()
            for i, (n, _) in enumerate(self.params[layer].items()):
                s = self.opt[layer].state.get(self.params[layer][n], {})
                if s:
                    tensors[f"{layer}.{n}.exp_avg"] = s["exp_avg"].contiguous()
                    tensors[f"{layer}.{n}.exp_avg_sq"] = s["exp_avg_sq"].contiguous()
                    tensors[f"{layer}.{n}.step"] = torch.as_tensor(s["step"]).reshape(1).float()
            tensors[f"{layer}.last_fired"] = self.last_fired[layer]
            tensors[f"{layer}.intercept"] = self.intercept[layer].contiguous()
            if self.gram[layer] is not None and self.step < self.skip_batches:  # the skip fit is under way
                tensors[f"{layer}.gram"], tensors[f"{layer}.cross"] = self.gram[layer], self.cross[layer]
        meta = {"step": self.step, "epoch": self.epoch, "tokens": self.tokens, "history": self.history,
                "scale_in": self.scale_in, "scale_out": self.scale_out, "scale_res": self.scale_res, "settings": asdict(self.st),
                "corpus": self.corpus_hash}
        atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"trainer": json.dumps(meta)}))

    def load_checkpoint(self, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads(fh.metadata()["trainer"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        self.step, self.epoch, self.tokens = meta["step"], meta["epoch"], meta["tokens"]
        self.history = meta["history"]
        self.scale_in = {int(k): v for k, v in meta["scale_in"].items()}
        self.scale_out = {int(k): v for k, v in meta["scale_out"].items()}
        self.scale_res = {int(k): v for k, v in meta["scale_res"].items()}
        for layer in self.layers:
            with torch.no_grad():
                for n, t in self.params[layer].items():
                    t.copy_(tensors[f"{layer}.{n}"])
            for n, t in self.params[layer].items():
                if f"{layer}.{n}.exp_avg" in tensors:
                    self.opt[layer].state[t] = {
                        "step": tensors[f"{layer}.{n}.step"].reshape(()),
                        "exp_avg": tensors[f"{layer}.{n}.exp_avg"].clone(),
                        "exp_avg_sq": tensors[f"{layer}.{n}.exp_avg_sq"].clone()}
            self.last_fired[layer] = tensors[f"{layer}.last_fired"].clone()
            self.intercept[layer] = tensors[f"{layer}.intercept"].clone()
            if f"{layer}.gram" in tensors:
                self.gram[layer], self.cross[layer] = tensors[f"{layer}.gram"], tensors[f"{layer}.cross"]
            elif self.step >= self.skip_batches:
                self.gram[layer], self.cross[layer] = None, None


@timed("training")
def train(lm, texts: Sequence[str], settings: TrainSettings | None = None, folder=None, progress: bool = True,
          stop_after_steps: int | None = None) -> TranscoderSet:
    """Train transcoders for ``settings.layers`` (default: all) on ``texts``; cached and resumable.

    The finished set is stored under ``folder`` (default: a cache folder keyed
    by the model, the texts and the settings) and loaded from there next time.
    A checkpoint is written every ``checkpoint_every`` batches; a run that is
    stopped (or told to stop with ``stop_after_steps``) picks up where it
    left off, on the same batches, and ends with the same weights as an
    uninterrupted run.
    """
    st = settings or TrainSettings()
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise TranscoderError("texts is empty: give the training corpus as a list of non-empty strings")
    if st.k < 1 or st.k > st.n_features:
        raise TranscoderError(f"k={st.k}: expected 1..n_features={st.n_features}")
    if not 0.0 <= st.lr_decay <= 1.0:
        raise TranscoderError(f"lr_decay={st.lr_decay!r}: expected a fraction of the steps in 0..1")
    if not 0.0 <= st.skip_fit < 1.0:
        raise TranscoderError(f"skip_fit={st.skip_fit!r}: expected a fraction of the first epoch's batches in "
                              "[0, 1) (0 learns the skip by gradient descent)")
    if st.ridge < 0 or st.step_tokens < 0:
        raise TranscoderError(f"ridge={st.ridge!r}, step_tokens={st.step_tokens!r}: expected values >= 0")
    if st.layers is not None and any(not 0 <= la < lm.n_layers for la in st.layers):
        raise TranscoderError(f"layers={st.layers}: expected values in 0..{lm.n_layers - 1}")
    corpus_hash = stable_hash(list(texts))
    key = stable_hash({"model": lm.name, "corpus": corpus_hash, "settings": asdict(st),
                       "code": code_version("transcoders", "activations", "sites", "models")})
    folder = Path(folder) if folder is not None else cache_dir("transcoders") / lm.name / key
    if (folder / "config.json").is_file():
        return TranscoderSet.load(folder)
    n_batches = math.ceil(len(texts) / st.batch_size)
    trainer = _Trainer(lm, st, corpus_hash, n_batches)
    ckpt = folder / "checkpoint.safetensors"
    if ckpt.is_file():
        trainer.load_checkpoint(ckpt)
    torch.manual_seed(st.seed)
    bar = tqdm(total=st.epochs * n_batches, initial=trainer.step, desc="train transcoders", disable=not progress)
    done_now = 0
    while trainer.epoch < st.epochs:
        batches = _batches(texts, st.batch_size, st.seed + trainer.epoch)
        start = trainer.step - trainer.epoch * n_batches
        for batch in batches[start:]:
            xin, xout, mask, _ = mlp_io(lm, batch, trainer.layers, st.max_length)
            row = trainer.train_batch(xin, xout, mask)
            bar.update(1)
            if math.isnan(row["fve_mean"]):
                bar.set_postfix_str("fitting the skip")
            else:
                bar.set_postfix(fve=f"{row['fve_mean']:.3f}")
            done_now += 1
            if trainer.step % st.checkpoint_every == 0:
                trainer.save_checkpoint(ckpt)
            if stop_after_steps is not None and done_now >= stop_after_steps:
                trainer.save_checkpoint(ckpt)
                bar.close()
                return trainer.transcoders()
        trainer.epoch += 1
        trainer.save_checkpoint(ckpt)
    bar.close()
    out = trainer.transcoders()
    out.save(folder)
    atomic_write_text(folder / "history.json", json.dumps(trainer.history))
    ckpt.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------------------
# quality


def quality(lm, tset: TranscoderSet, texts: Sequence[str], batch_size: int = 16, max_length: int = 128,
            progress: bool = False, baseline_texts: Sequence[str] = (), with_max: bool = False) -> dict[int, dict]:
    """Per layer on held-out ``texts`` (first tokens left out): variance explained, mean L0, the share of
    features never on (``dead``) and on at more than :data:`DENSE` of the tokens (``dense``).

    Also, as the baseline, the fraction of variance a least-squares *linear*
    map from ``mlp_in`` to ``mlp_out`` explains on ``texts`` (``linear_fve``),
    fitted on ``baseline_texts`` (e.g. some of the transcoders' training
    texts; without them, no baseline). ``with_max=True`` adds ``"max_act"``:
    every feature's largest activation on ``texts`` (a tensor, what
    :func:`max_activations` gives), from the same forward passes.
    """
    layers = sorted(tset)
    if not isinstance(with_max, bool):
        raise TypeError(f"with_max={with_max!r}: expected True or False")
    sums = {la: {"sse": 0.0, "l0": 0.0, "n": 0, "fired": torch.zeros(tset[la].cfg.n_features),
                 "max": torch.zeros(tset[la].cfg.n_features), "y": [], "x": [], "half": []} for la in layers}
    tagged = [(t, 0) for t in baseline_texts] + [(t, 1) for t in texts]
    for batch in tqdm(_batches(tagged, batch_size, 0), desc="transcoder quality", disable=not progress):
        xin, xout, mask, _ = mlp_io(lm, [t for t, _ in batch], layers, max_length, tset.input_site)
        keep = first_left_out(mask)
        m = keep.reshape(-1)
        half = torch.tensor([h for _, h in batch])[:, None].expand_as(keep).reshape(-1)[m.cpu()]
        x_all = {la: xin[la].reshape(-1, lm.d_model)[m].float().cpu() for la in layers}
        y_all = {la: xout[la].reshape(-1, lm.d_model)[m].float().cpu() for la in layers}
        if half.any():
            with torch.no_grad():
                feats = {la: tset[la].encode(x_all[la][half.bool()]) for la in layers}
        for la in layers:
            s = sums[la]
            if not half.any():
                s["x"].append(x_all[la])
                s["y"].append(y_all[la])
                s["half"].append(half)
                continue
            x, y, f = x_all[la][half.bool()], y_all[la][half.bool()], feats[la]
            with torch.no_grad():
                y_hat = tset.reconstruct(la, feats, x)
            s["sse"] += float((y_hat - y).pow(2).sum())
            s["l0"] += float((f != 0).sum())
            s["n"] += y.shape[0]
            s["fired"] += (f != 0).sum(0)
            s["max"] = torch.maximum(s["max"], f.max(0).values) if len(f) else s["max"]
            s["y"].append(y_all[la])
            s["x"].append(x_all[la])
            s["half"].append(half)
    out = {}
    for la in layers:
        s = sums[la]
        y = torch.cat(s["y"]).double()
        x = torch.cat(s["x"]).double()
        h = torch.cat(s["half"]).bool()
        yt = y[h]
        sst = float((yt - yt.mean(0)).pow(2).sum())
        lin = float("nan")
        if (~h).any():
            X = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
            sol = torch.linalg.lstsq(X[~h], y[~h]).solution
            lin = 1 - float((X[h] @ sol - yt).pow(2).sum()) / sst
        out[la] = {"fve": 1 - s["sse"] / sst, "l0": s["l0"] / s["n"], "dead": float((s["fired"] == 0).float().mean()),
                   "dense": float((s["fired"] > DENSE * s["n"]).float().mean()), "linear_fve": lin, "tokens": s["n"]}
        if with_max:
            out[la]["max_act"] = s["max"]
    return out


def _encoded_batches(lm, texts: Sequence[str], batch_size: int, max_length: int):
    """Right-padded encodings of ``texts`` in batches of similar length (little padding)."""
    texts = sorted(texts, key=len)
    for j in range(0, len(texts), batch_size):
        yield {k: v.to(lm.device) for k, v in
               lm.encode(list(texts[j:j + batch_size]), padding_side="right", max_length=max_length).items()}


def _ce_sum(logits: torch.Tensor, enc: dict) -> tuple[float, int]:
    """Summed next-token cross-entropy (nats) over a batch's real tokens, and their count."""
    logits = logits.float()[:, :-1]
    tgt = enc["input_ids"][:, 1:]
    keep = enc["attention_mask"][:, 1:].bool()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                           reduction="none").reshape(tgt.shape)
    return float(ce[keep].sum()), int(keep.sum())


def next_token_loss(lm, texts: Sequence[str], interventions: Sequence = (), batch_size: int = 16,
                    max_length: int = 128) -> float:
    """Mean next-token cross-entropy (nats) over every real token of ``texts``, under ``interventions``."""
    items = resolve(lm, interventions)
    total, count = 0.0, 0
    for enc in _encoded_batches(lm, texts, batch_size, max_length):
        got: dict = {}
        with torch.inference_mode(), lm.nn.trace(enc, **lm.remote_kwargs):
            apply_all(lm, items, 0)
            got["logits"] = lm.nn.output.logits.save()
        t, c = _ce_sum(got["logits"], enc)
        total, count = total + t, count + c
    return total / count


def splice_losses(lm, tset: TranscoderSet, texts: Sequence[str], each: bool = True, batch_size: int = 16,
                  max_length: int = 128) -> dict:
    """Next-token loss clean, with every transcoder spliced in, with each one alone, and with each MLP zeroed.

    The one-layer conditions reuse the clean run below the changed layer:
    the decoder blocks under it are skipped (nnsight's ``skip``) and give
    the clean run's outputs instead, which are the same numbers a full
    forward would compute there. That halves the work of the ``2 x
    n_layers`` one-layer passes on average.
    """
    splices = tset.splices()
    conditions = [("all", 0, resolve(lm, splices))]
    if each:
        for la, tc in zip(sorted(tset), splices):
            # a cross-layer set's layer reads the features of the layers under it, so those run as they are
            first = min(tset.writers(la), default=la) if tc.feeds else la
            conditions.append((("each", la), first, resolve(lm, [tc])))
            zero = Set(f"mlp_out.{la}", list(range(lm.d_model)), 0.0)
            conditions.append((("zero_mlp", la), la, resolve(lm, [zero])))
    below = max((first for _, first, _ in conditions), default=0)
    totals = {"clean": 0.0, **{key: 0.0 for key, _, _ in conditions}}
    count = 0
    for enc in _encoded_batches(lm, texts, batch_size, max_length):
        got: dict = {}
        with torch.inference_mode(), lm.nn.trace(enc, **lm.remote_kwargs):
            got["outs"] = [lm.layer(i).output.save() for i in range(below)]
            got["logits"] = lm.nn.output.logits.save()
        outs = got.pop("outs")
        t, c = _ce_sum(got["logits"], enc)
        totals["clean"] += t
        count += c
        for key, first, items in conditions:
            with torch.inference_mode(), lm.nn.trace(enc, **lm.remote_kwargs):
                for i in range(first):
                    lm.layer(i).skip(outs[i])
                apply_all(lm, items, 0)
                got["logits"] = lm.nn.output.logits.save()
            totals[key] += _ce_sum(got["logits"], enc)[0]
    out = {"clean": totals["clean"] / count, "all": totals["all"] / count}
    if each:
        out["each"] = {la: totals[("each", la)] / count for la in sorted(tset)}
        out["zero_mlp"] = {la: totals[("zero_mlp", la)] / count for la in sorted(tset)}
    return out


def max_activations(lm, tset: TranscoderSet, texts: Sequence[str], batch_size: int = 16, max_length: int = 128
                    ) -> dict[int, torch.Tensor]:
    """The largest activation of every feature over ``texts`` (position 0 left out)."""
    layers = sorted(tset)
    best = {la: torch.zeros(tset[la].cfg.n_features) for la in layers}
    for j in range(0, len(texts), batch_size):
        xin, _, mask, _ = mlp_io(lm, texts[j:j + batch_size], layers, max_length, tset.input_site)
        mask = first_left_out(mask)
        for la in layers:
            with torch.no_grad():
                f = tset[la].encode(xin[la][mask].float().cpu())
            best[la] = torch.maximum(best[la], f.max(0).values) if len(f) else best[la]
    return best
