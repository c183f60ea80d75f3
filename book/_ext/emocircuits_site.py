"""Sphinx tweaks for this book, loaded through ``_config.yml`` (``local_extensions``).

- sphinx-thebe adds its inline configuration script once per read of the
  environment, and Jupyter Book's build reads it twice, so every page
  declared ``const THEBE_JS_URL`` twice and logged a SyntaxError in the
  browser (tests/test_html.py caught it). Each page's scripts are
  de-duplicated here, keeping the first of identical entries.
"""

from __future__ import annotations


def _script_key(js) -> tuple:
    attrs = getattr(js, "attributes", {}) or {}
    # an inline script is registered once with filename None and once with ""
    return getattr(js, "filename", None) or "", tuple(sorted((k, str(v)) for k, v in attrs.items()))


def dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        key = _script_key(js)
        if key not in seen:
            seen.add(key)
            kept.append(js)
    scripts[:] = kept


def setup(app):
    app.connect("html-page-context", dedupe_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
