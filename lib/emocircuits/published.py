"""Transcoder sets in circuit-tracer's format: load published ones, write ours (chapter 05).

A set is a folder (local, or on the hub) with a ``config.yaml``::

    model_kind: transcoder_set          # or cross_layer_transcoder
    feature_input_hook: mlp.hook_in     # where the features read
    feature_output_hook: hook_mlp_out   # where they write
    transcoders: [hf://owner/repo/layer_0.safetensors, ...]   # optional: else layer_{i}.safetensors
    activation: topk                    # optional, with k: ...; else JumpReLU when files hold a threshold,
    k: 64                               # else ReLU

Per-layer files hold ``W_enc [F, d]``, ``W_dec [F, d]``, ``b_enc``, ``b_dec`` and optionally
``activation_function.threshold``, ``k`` and ``W_skip [d, d]`` (GemmaScope ``.npz`` files and
GemmaScope 2's lower-case keys load too). A cross-layer set keeps layer ``i`` in
``W_enc_{i}.safetensors`` (``W_enc_i``, ``b_enc_i``, ``b_dec_i``, optional ``threshold_i``) and
``W_dec_{i}.safetensors`` (``W_dec_i [F, n_layers - i, d]``: what layer ``i``'s features write into
it and every later layer); GemmaScope 2's cross-layer sets list one file per layer under ``transcoders``
instead (lower-case keys, an optional affine skip).

The hooks are TransformerLens names. They map onto this book's sites:

=======================  ==========================================================================
``mlp.hook_in``          ``mlp_in``: the MLP's input, after the pre-MLP norm
``ln2.hook_normalized``  the same before the norm's elementwise weight; the weight is folded into the
                         encoder (and skip) on loading, so the loaded set reads ``mlp_in`` exactly
``hook_resid_mid``       ``resid_mid``: the residual stream between attention and MLP
``hook_mlp_out``         ``mlp_out``: what the MLP adds to the residual stream (after Gemma's post-norm)
``mlp.hook_out``         the MLP module's output: ``mlp_out`` on layouts without a post-MLP norm only
=======================  ==========================================================================

Which published set fits which registry model: README, "Published transcoders".
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from .cache import atomic_write, atomic_write_text
from .transcoders import Transcoder, TranscoderConfig, TranscoderError, TranscoderSet, load_layer_file

KINDS = ("transcoder_set", "cross_layer_transcoder")
# input hook -> (the book's site, whether the file's encoder reads the input before the norm's weight)
INPUT_HOOKS = {"mlp.hook_in": ("mlp_in", False), "ln2.hook_normalized": ("mlp_in", True),
               "hook_resid_mid": ("resid_mid", False)}
OUTPUT_HOOKS = ("hook_mlp_out", "mlp.hook_out")


def read_config(text: str) -> dict:
    """Parse and check a ``config.yaml``; the error names the field and what is accepted."""
    import yaml

    cfg = yaml.safe_load(text) or {}
    if not isinstance(cfg, dict):
        raise TranscoderError("config.yaml should be a mapping of fields")
    kind = cfg.get("model_kind", "transcoder_set")
    if kind not in KINDS:
        raise TranscoderError(f"config.yaml: model_kind={kind!r}; expected one of {', '.join(KINDS)}")
    hook_in = cfg.get("feature_input_hook", "mlp.hook_in")
    if hook_in not in INPUT_HOOKS:
        raise TranscoderError(f"config.yaml: feature_input_hook={hook_in!r}; expected one of {', '.join(INPUT_HOOKS)}")
    hook_out = cfg.get("feature_output_hook", "hook_mlp_out")
    if hook_out not in OUTPUT_HOOKS:
        raise TranscoderError(f"config.yaml: feature_output_hook={hook_out!r}; "
                              f"expected one of {', '.join(OUTPUT_HOOKS)}")
    files = cfg.get("transcoders")
    if files is not None and (not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files)):
        raise TranscoderError("config.yaml: 'transcoders' should be a non-empty list of file paths, one per layer")
    act = cfg.get("activation")
    if act not in (None, "topk", "relu", "jumprelu", "jump_relu"):
        raise TranscoderError(f"config.yaml: activation={act!r}; expected topk, relu or jumprelu")
    if act == "topk" and not isinstance(cfg.get("k"), int):
        raise TranscoderError("config.yaml: activation topk needs an integer k")
    return {**cfg, "model_kind": kind, "feature_input_hook": hook_in, "feature_output_hook": hook_out}


def _split_source(source: str) -> tuple[str, str | None, str | None]:
    """``owner/repo[/sub/folder][@revision]`` -> ``(repo_id, subfolder, revision)``."""
    source, _, revision = source.partition("@")
    parts = source.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise TranscoderError(f"transcoder set {source!r}: expected a local folder with a config.yaml or a hub id "
                              "'owner/repo[/subfolder][@revision]'")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None, revision or None


class _Files:
    """Where a set's files come from: a local folder, or a hub repository (downloaded on first use)."""

    def __init__(self, source):
        self.local = Path(source) if Path(source).is_dir() else None
        if self.local is None:
            self.repo, self.sub, self.revision = _split_source(str(source))
        self.name = str(source)

    def get(self, name: str) -> Path:
        if name.startswith("hf://"):  # hf://owner/repo/path/in/repo[?revision=R]
            from urllib.parse import parse_qs, urlsplit

            from huggingface_hub import hf_hub_download

            uri = urlsplit(name)
            revision = parse_qs(uri.query).get("revision", [None])[0]
            return Path(hf_hub_download(f"{uri.netloc}/{uri.path.strip('/').split('/')[0]}",
                                        "/".join(uri.path.strip("/").split("/")[1:]), revision=revision))
        if self.local is not None:
            path = self.local / name
            if not path.is_file():
                raise TranscoderError(f"{self.name}: no file {name!r}")
            return path
        from huggingface_hub import hf_hub_download

        name = f"{self.sub}/{name}" if self.sub else name
        return Path(hf_hub_download(self.repo, name, revision=self.revision))


def load_set(lm, source, layers: Iterable[int] | None = None) -> TranscoderSet:
    """Load a circuit-tracer-format set for ``lm`` from a local folder or a hub id.

    ``layers`` picks some layers of a per-layer set (a cross-layer set loads whole). The set is
    checked against ``lm`` (width, layers) and its input hook mapped onto the book's sites (see the
    module docstring); ``ln2.hook_normalized`` encoders get ``lm``'s pre-MLP norm weights folded in.
    """
    files = _Files(source)
    cfg = read_config(files.get("config.yaml").read_text())
    site, normalised = INPUT_HOOKS[cfg["feature_input_hook"]]
    if cfg["feature_output_hook"] == "mlp.hook_out" and lm.layout.mlp_out_norm:
        raise TranscoderError(f"{files.name}: feature_output_hook mlp.hook_out is the MLP before the post-MLP norm "
                              f"of {lm.name} ({lm.layout.name} layout); this book's sites need hook_mlp_out there")
    model = str(cfg.get("model_name", "")) or files.name
    if cfg["model_kind"] == "cross_layer_transcoder":
        if layers is not None:
            raise TranscoderError("a cross-layer set loads whole: its features write into every later layer")
        tset = (_load_clt_files(files, cfg["transcoders"], lm.n_layers, site, model) if cfg.get("transcoders")
                else _load_clt(files, lm.n_layers, site, model))
    else:
        names = cfg.get("transcoders") or [f"layer_{i}.safetensors" for i in range(lm.n_layers)]
        chosen = range(len(names)) if layers is None else sorted(layers)
        bad = [la for la in chosen if not 0 <= la < len(names)]
        if bad:
            raise TranscoderError(f"{files.name}: layers {bad} not in the set (0..{len(names) - 1})")
        act = cfg.get("activation")
        tset = TranscoderSet({la: load_layer_file(files.get(names[la]), layer=la, model=model, input_site=site,
                                                  k=cfg.get("k"), activation="jumprelu" if act == "jump_relu" else act)
                              for la in chosen})
    for tc in tset.values():
        tc.cfg.source = f"{files.name} ({cfg['model_kind']}, {cfg['feature_input_hook']})"
    if normalised:
        _fold_norm_weight(lm, tset)
    return tset.check(lm)


def _fold_norm_weight(lm, tset: TranscoderSet) -> None:
    """Encoders that read the normalised input before the norm's weight, rewritten to read ``mlp_in``."""
    for la, tc in tset.items():
        norm = lm.hf_part(la, lm.layout.mlp_in_norm)
        gain = (lm.layout.norm_offset + norm.weight.detach().float().cpu()).to(tc.W_enc.dtype)
        if bool((gain == 0).any()):
            raise TranscoderError(f"layer {la}: the pre-MLP norm has zero weights; ln2.hook_normalized cannot be "
                                  "rewritten to read mlp_in")
        with torch.no_grad():
            tc.W_enc.div_(gain)
            if tc.W_skip is not None:
                tc.W_skip.div_(gain)


def _load_clt(files: _Files, n_layers: int, site: str, model: str) -> TranscoderSet:
    from safetensors import safe_open

    out = TranscoderSet()
    for la in range(n_layers):
        with safe_open(str(files.get(f"W_enc_{la}.safetensors")), framework="pt") as fh:
            enc = {k: fh.get_tensor(k).float() for k in fh.keys()}
        with safe_open(str(files.get(f"W_dec_{la}.safetensors")), framework="pt") as fh:
            W_dec = fh.get_tensor(f"W_dec_{la}").float()
        need = {f"W_enc_{la}", f"b_enc_{la}", f"b_dec_{la}"}
        if not need <= set(enc):
            raise TranscoderError(f"W_enc_{la}.safetensors: needs {sorted(need)}, found {sorted(enc)}")
        F, d = enc[f"W_enc_{la}"].shape
        if W_dec.shape != (F, n_layers - la, d):
            raise TranscoderError(f"W_dec_{la}: shape {tuple(W_dec.shape)}, expected {(F, n_layers - la, d)} "
                                  f"(features, layers {la}..{n_layers - 1}, d_model)")
        thr = enc.get(f"threshold_{la}")
        cfg = TranscoderConfig(d_model=d, n_features=F, layer=la, k=None, activation="relu" if thr is None else "jumprelu",
                               model=model, input_site=site, reach=n_layers - la)
        state = {"W_enc": enc[f"W_enc_{la}"], "b_enc": enc[f"b_enc_{la}"], "b_dec": enc[f"b_dec_{la}"],
                 "W_dec": W_dec[:, 0], "W_dec_cross": W_dec[:, 1:]}
        if thr is not None:
            state["activation_function.threshold"] = thr.reshape(-1)
        out[la] = Transcoder.from_state(state, cfg)
    return out


def _load_clt_files(files: _Files, names: list[str], n_layers: int, site: str, model: str) -> TranscoderSet:
    """A cross-layer set kept as one file per layer, GemmaScope 2's way: ``w_enc [d, F]``, ``w_dec [F, n_layers,
    d]`` (its slice from the layer on is used), ``b_enc``, ``b_dec``, ``threshold`` and optionally
    ``affine_skip_connection [d, d]`` (applied as ``x @ A``)."""
    from safetensors import safe_open

    if len(names) != n_layers:
        raise TranscoderError(f"the set lists {len(names)} files; the model has {n_layers} layers")
    out = TranscoderSet()
    for la, name in enumerate(names):
        with safe_open(str(files.get(name)), framework="pt") as fh:
            raw = {k: fh.get_tensor(k).float() for k in fh.keys()}
        need = {"w_enc", "w_dec", "b_enc", "b_dec", "threshold"}
        if not need <= set(raw):
            raise TranscoderError(f"{name}: a GemmaScope 2 cross-layer file needs {sorted(need)}, found {sorted(raw)}")
        d, F = raw["w_enc"].shape
        if raw["w_dec"].shape != (F, n_layers, d):
            raise TranscoderError(f"{name}: w_dec has shape {tuple(raw['w_dec'].shape)}, expected {(F, n_layers, d)}")
        skip = raw.get("affine_skip_connection")
        cfg = TranscoderConfig(d_model=d, n_features=F, layer=la, k=None, activation="jumprelu", model=model,
                               input_site=site, reach=n_layers - la, skip=skip is not None)
        state = {"W_enc": raw["w_enc"].T.contiguous(), "b_enc": raw["b_enc"], "b_dec": raw["b_dec"],
                 "W_dec": raw["w_dec"][:, la], "W_dec_cross": raw["w_dec"][:, la + 1:],
                 "activation_function.threshold": raw["threshold"]}
        if skip is not None:
            state["W_skip"] = skip.T.contiguous()
        out[la] = Transcoder.from_state(state, cfg)
    return out


def save_set(tset: TranscoderSet, folder, model_name: str = "") -> Path:
    """Write ``tset`` in circuit-tracer's format (per-layer or cross-layer), each file atomically.

    Ours read ``mlp_in`` and write ``mlp_out``: the config says ``mlp.hook_in`` and ``hook_mlp_out``
    (``hook_resid_mid`` for a set that reads the residual stream).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    layers = sorted(tset)
    if layers != list(range(len(layers))):
        raise TranscoderError(f"circuit-tracer's format needs every layer from 0; this set has {layers}")
    hook_in = {"mlp_in": "mlp.hook_in", "resid_mid": "hook_resid_mid"}[tset.input_site]
    config = {"model_kind": "cross_layer_transcoder" if tset.cross_layer else "transcoder_set",
              "model_name": model_name or next(iter(tset.values())).cfg.model,
              "feature_input_hook": hook_in, "feature_output_hook": "hook_mlp_out"}
    top = {tc.cfg.k for tc in tset.values() if tc.cfg.activation == "topk"}
    if top:
        if any(tc.cfg.topk_relu for tc in tset.values()):
            raise TranscoderError("circuit-tracer's TopK keeps the signs of the k largest; a set that takes their "
                                  "ReLU (ours) cannot be written as it is")
        config.update(activation="topk", k=top.pop())
    n = len(layers)
    for la in layers:
        tc = tset[la]
        if tset.cross_layer:
            if tc.cfg.reach != n - la:
                raise TranscoderError(f"layer {la} reaches {tc.cfg.reach} layers; a cross-layer set reaches the last")
            if tc.W_skip is not None:
                raise TranscoderError("circuit-tracer's cross-layer files hold no skip connection")
            enc = {f"W_enc_{la}": tc.W_enc, f"b_enc_{la}": tc.b_enc, f"b_dec_{la}": tc.b_dec}
            if tc.cfg.activation == "jumprelu":
                enc[f"threshold_{la}"] = tc.threshold
            dec = torch.cat([tc.W_dec[:, None], tc.W_dec_cross], 1) if tc.W_dec_cross is not None else tc.W_dec[:, None]
            for name, state in ((f"W_enc_{la}", enc), (f"W_dec_{la}", {f"W_dec_{la}": dec})):
                state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
                atomic_write(folder / f"{name}.safetensors", lambda p, st=state: save_file(st, str(p)))
        else:
            state = tc.state()
            if tc.cfg.activation == "topk":
                state["k"] = torch.tensor(tc.cfg.k)
            atomic_write(folder / f"layer_{la}.safetensors", lambda p, st=state: save_file(st, str(p)))
    import yaml

    atomic_write_text(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return folder


def describe(tset: TranscoderSet) -> dict:
    """What a loaded set is, for a chapter to print."""
    tc = tset[min(tset)]
    return {"layers": len(tset), "features_per_layer": tc.cfg.n_features, "activation": tc.cfg.activation,
            "k": tc.cfg.k, "reads": tset.input_site, "cross_layer": tset.cross_layer, "skip": tc.W_skip is not None,
            "source": tc.cfg.source}

