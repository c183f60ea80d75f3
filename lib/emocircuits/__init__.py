"""emocircuits: how language models represent and express emotion and empathy.

The library behind the book. Modules follow the data flow:
``models`` -> ``activations`` -> (probes, circuits, attribution) -> ``steering`` -> judges.

The names below are imported on first use (PEP 562), so that ``import emocircuits`` (which every chapter's
kernel runs, to note the data files it reads) does not load torch until something needs it.
"""

import importlib
import warnings

# tqdm.auto warns in notebooks without ipywidgets; progress bars still work as text.
warnings.filterwarnings("ignore", message="IProgress not found")

from .book import watch_reads as _watch_reads

_watch_reads()  # under the book runner, note which data files this chapter reads

# each public name and the module that defines it
_HOMES = {"DEFAULT_MODEL": "registry", "ModelError": "registry", "LoadedModel": "models", "load_model": "models",
          "Site": "activations", "capture": "activations", "parse_site": "activations"}
__all__ = sorted(_HOMES)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'emocircuits' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
