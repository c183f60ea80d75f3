"""emocircuits: how language models represent and express emotion and empathy.

The library behind the book. Modules follow the data flow:
``models`` -> ``activations`` -> (probes, circuits, attribution) -> ``steering`` -> judges.
"""

import warnings

# tqdm.auto warns in notebooks without ipywidgets; progress bars still work as text.
warnings.filterwarnings("ignore", message="IProgress not found")

from .models import LoadedModel, load_model
from .registry import DEFAULT_MODEL, ModelError
from .activations import Site, capture, parse_site
from .book import watch_reads as _watch_reads

_watch_reads()  # under the book runner, note which data files this chapter reads

__all__ = ["DEFAULT_MODEL", "LoadedModel", "ModelError", "load_model", "Site", "capture", "parse_site"]
__version__ = "0.1.0"
