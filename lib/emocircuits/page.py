"""What a chapter page shows besides tables and figures: each section's result in a box.

A section ends with ``display(result(f"... {number} ..."))`` in a cell tagged ``remove-input``, so the
sentence is written from the run's own numbers (a QUICK page never quotes the default book's) and the
browser check can find one box per numbered section (``div.admonition.result``).
"""

from __future__ import annotations

from IPython.display import Markdown

RESULT_CLASS = "result"


def result(text: str) -> Markdown:
    """A section's result, one or two sentences, as a boxed admonition titled "Result"."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("result(text): text must be a non-empty sentence")
    if ":::" in text:
        raise ValueError("result(text): text must not contain ':::' (it would close the box)")
    return Markdown(f":::{{admonition}} Result\n:class: {RESULT_CLASS}\n\n{text.strip()}\n:::\n")
