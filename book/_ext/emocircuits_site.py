"""Sphinx tweaks for this book, loaded through ``_config.yml`` (``local_extensions``).

- sphinx-thebe adds its inline configuration script once per read of the
  environment, and Jupyter Book's build reads it twice, so every page
  declared ``const THEBE_JS_URL`` twice and logged a SyntaxError in the
  browser (tests/test_html.py caught it). Each page's scripts are
  de-duplicated here, keeping the first of identical entries.
- The site's ``index.html`` (the root page is not called ``index``) was a
  bare ``<meta>`` redirect written by sphinx-external-toc: no title, no
  icon, so a browser asked the server for ``/favicon.ico`` and logged a
  404. It is written here first, as a small page with the book's title,
  its icon and a link for readers whose browser does not follow the
  redirect.
- ``static/emocircuits.css`` keeps every output inside the text column:
  printed lines and table cells wrap rather than scroll sideways.
"""

from __future__ import annotations

import html
from pathlib import Path

from emocircuits.cache import atomic_write_text


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


def write_index(app, exception) -> None:
    if exception is not None or app.builder.format != "html" or app.config.root_doc == "index":
        return
    target = f"{app.config.root_doc}.html"
    title = html.escape(app.config.html_title or app.config.project or "")
    icon = app.config.html_favicon
    icon_link = f'<link rel="icon" href="_static/{Path(icon).name}">' if icon and "://" not in icon else ""
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Refresh" content="0; url={target}">\n<title>{title}</title>\n{icon_link}\n'
            f'</head><body><p><a href="{target}">{title}</a></p></body></html>\n')
    atomic_write_text(Path(app.outdir) / "index.html", page)


def add_stylesheet(app) -> None:
    app.config.html_static_path.append(str(Path(__file__).parent / "static"))
    app.add_css_file("emocircuits.css")


def setup(app):
    app.connect("builder-inited", add_stylesheet)
    app.connect("html-page-context", dedupe_scripts)
    app.connect("build-finished", write_index, priority=400)  # before sphinx-external-toc's bare redirect
    return {"parallel_read_safe": True, "parallel_write_safe": True}
