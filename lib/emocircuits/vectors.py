"""Steering vectors on disk (chapter 06): one vector as safetensors with its metadata, and llama.cpp's
control-vector GGUF (one direction per block output)."""

from __future__ import annotations

import torch

from .cache import atomic_write


def save_vector(path, vector, *, model: str, layer: int, site: str = "resid_post", pooling: str = "",
                dataset_hash: str = "", **extra: str):
    """One steering vector as safetensors (tensor ``vector``), with string metadata; written atomically."""
    from pathlib import Path

    from safetensors.torch import save_file

    vec = torch.as_tensor(vector, dtype=torch.float32).contiguous()
    if vec.ndim != 1:
        raise ValueError(f"vector must be 1-D, got shape {tuple(vec.shape)}")
    meta = {"model": model, "layer": str(int(layer)), "site": site, "pooling": pooling,
            "dataset_hash": dataset_hash, "d_model": str(vec.numel()), **{k: str(v) for k, v in extra.items()}}
    return atomic_write(Path(path), lambda p: save_file({"vector": vec}, str(p), metadata=meta))


def load_vector(path) -> tuple[torch.Tensor, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if "vector" not in f.keys():
                raise ValueError(f"{path}: no tensor named 'vector' (expected a file written by save_vector)")
            return f.get_tensor("vector"), dict(f.metadata() or {})
    except SafetensorError as err:
        raise ValueError(f"{path}: not a safetensors file ({err}); expected a file written by save_vector") from None


def export_control_vector(path, directions: dict, model_hint: str, site: str = "resid_post"):
    """Write llama.cpp's control-vector GGUF (architecture ``controlvector``, tensors ``direction.L``).

    llama.cpp adds ``direction.L`` to the output of block L, which is this
    book's ``resid_post.L``; it has no slot for L = 0, so layer 0 is refused.
    The strength is chosen at load time (``--control-vector-scaled FILE s``).
    """
    from pathlib import Path

    import gguf
    import numpy as np

    if site != "resid_post":
        raise ValueError(f"site={site!r}: llama.cpp control vectors act on the block output, resid_post only")
    if not directions:
        raise ValueError("directions is empty")
    bad = [l for l in directions if int(l) < 1]
    if bad:
        raise ValueError(f"layers {bad}: llama.cpp control vectors start at layer 1 (block outputs 1..n-1)")

    def write(p):
        w = gguf.GGUFWriter(str(p), "controlvector")
        w.add_string("controlvector.model_hint", model_hint)
        w.add_uint32("controlvector.layer_count", len(directions))
        for layer in sorted(directions, key=int):
            w.add_tensor(f"direction.{int(layer)}",
                         np.ascontiguousarray(torch.as_tensor(directions[layer]).float().numpy()))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    return atomic_write(Path(path), write)


def load_control_vector(path) -> tuple[dict[int, torch.Tensor], str]:
    """Read a control-vector GGUF back: ``({layer: vector}, model_hint)``."""
    import gguf

    r = gguf.GGUFReader(str(path))
    arch = r.fields.get("general.architecture")
    if arch is None or bytes(arch.parts[arch.data[0]]).decode() != "controlvector":
        raise ValueError(f"{path}: not a control-vector GGUF (general.architecture is not 'controlvector')")
    hint_field = r.fields.get("controlvector.model_hint")
    hint = bytes(hint_field.parts[hint_field.data[0]]).decode() if hint_field is not None else ""
    out = {}
    for t in r.tensors:
        if t.name.startswith("direction."):
            out[int(t.name.split(".")[1])] = torch.tensor(t.data.copy()).reshape(-1).float()
    return out, hint
