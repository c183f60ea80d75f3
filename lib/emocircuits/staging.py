"""Staging executed chapters as the published pages (`emocircuits book` calls it before Jupyter Book renders):
streams as a front end shows them with no progress bars, figures with alt text and numbered captions,
plumbing folded away under one parameters cell, and the landing page's findings, figure and chapter list
written from the same build's records."""

from __future__ import annotations

import ast
import base64
import json
import math
import re
import shutil
from pathlib import Path

from .cache import atomic_write_text
from .registry import DEFAULT_MODEL
from .results import findings


def stage(root: Path, executed: Path, staging: Path, records: dict[str, dict]) -> None:
    """The book's sources with the executed chapters, as Jupyter Book renders them: each page's streams as a
    front end shows them (:func:`tidy_streams`), each figure with its alt text and caption
    (:func:`describe_figures`), its plumbing folded away (:func:`present_code`), and the landing page's
    findings and chapter list from this build's ``records`` (:func:`write_landing`; ``{stem: {name: value}}``, as
    :func:`emocircuits.records.recorded` reads them)."""
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(root / name, staging / name)
    shutil.copytree(root / "book", staging / "book")
    (staging / "notebooks").mkdir()
    pages = {}
    for nb in sorted(executed.glob("[0-9][0-9]_*.ipynb")):
        page = present_code(describe_figures(tidy_streams(json.loads(nb.read_text()))))
        pages[nb.stem] = page
        (staging / "notebooks" / nb.name).write_text(json.dumps(page, indent=1, ensure_ascii=False))
    write_landing(staging / "book", pages, records)


def _joined(text) -> str:
    """A notebook's text field as one string (nbformat allows a list of lines)."""
    return "".join(text) if isinstance(text, list) else text


def _source(cell: dict) -> str:
    return _joined(cell.get("source", ""))


def _tag(cell: dict, tag: str) -> None:
    tags = cell.setdefault("metadata", {}).setdefault("tags", [])
    if tag not in tags:
        tags.append(tag)


def _parameter_lines(source: str) -> dict[str, str]:
    """``{name: value source}`` of a parameters cell's top-level ``NAME = value`` lines."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.get_source_segment(source, node.value)
    return out


def _statements(source: str) -> list[ast.stmt]:
    """A code cell's top-level statements (none if it is not plain Python, e.g. a magic)."""
    try:
        return ast.parse(source).body
    except SyntaxError:
        return []


def _is_setup(body: list[ast.stmt]) -> bool:
    """Imports and the chapter's set-up calls, nothing a reader needs to read."""
    imports = sum(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body)
    return bool(body) and imports >= 0.6 * len(body)


def _calls_record(body: list[ast.stmt]) -> bool:
    return any(isinstance(n, ast.Expr) and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Name)
               and n.value.func.id == "record" for n in body)


def run_note(params: dict) -> str:
    """A note for the top of a page built at another size or on another model than the published book,
    whose prose quotes the default book's numbers; "" for the default book."""
    model = params.get("MODEL", DEFAULT_MODEL)
    parts = []
    if params.get("QUICK"):
        parts.append("in QUICK mode, on fewer items (read its intervals, not its digits)")
    if params.get("FULL"):
        parts.append("at the FULL size, on more items")
    if model != DEFAULT_MODEL:
        parts.append(f"on `{model}`")
    if not parts:
        return ""
    return (":::{note}\nThis page was built " + " and ".join(parts) + ". Its tables, figures and summary come "
            f"from this run; numbers quoted in the prose are the published book's (default size, "
            f"`{DEFAULT_MODEL}`).\n:::")


LONG_CELL_LINES = 7  # a longer code cell is folded on the page (one click shows it)


def present_code(nb: dict) -> dict:
    """An executed chapter's code as a page shows it: one parameters cell, the plumbing folded.

    - Papermill adds the run's values as a second cell (``injected-parameters``); the page shows one cell,
      the chapter's own parameters cell with this run's values put in (its comments kept), after a note
      (:func:`run_note`) when the run is not the published book's size and model.
    - Set-up cells (mostly imports), cells that record the headline numbers (``record(...)``), cells whose
      only output is a figure and cells longer than ``LONG_CELL_LINES`` get ``hide-input``: the output shows,
      the code is one click away. Short cells, the library calls a reader would type, stay in view.
    A cell tagged ``show-input`` is left as it is. Returns ``nb``, changed in place.
    """
    cells = nb.get("cells", [])
    injected = next((c for c in cells if "injected-parameters" in c.get("metadata", {}).get("tags", [])), None)
    params = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if injected is not None and params is not None:
        values = _parameter_lines(_source(injected))
        lines = []
        for line in _source(params).splitlines():
            name, eq, rest = line.partition("=")
            if eq and name.strip() in values:  # the value's source replaced, a comment after it kept
                line = name + eq + rest.replace(_parameter_lines(line)[name.strip()], values[name.strip()], 1)
            lines.append(line)
        params["source"] = "# this run's values (papermill's -p NAME VALUE sets them)\n" + "\n".join(lines)
        _tag(injected, "remove-cell")
        note = run_note({k: ast.literal_eval(v) for k, v in values.items() if k in ("MODEL", "QUICK", "FULL")})
        if note:
            cells.insert(cells.index(params), {"cell_type": "markdown", "metadata": {}, "source": note})
    for cell in cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.get("cell_type") != "code" or "show-input" in tags or {"parameters", "remove-cell"} & set(tags):
            continue
        outputs = cell.get("outputs", [])
        only_figures = bool(outputs) and all(o.get("output_type") in ("display_data", "execute_result")
                                             and "image/png" in o.get("data", {}) for o in outputs)
        source = _source(cell)
        body = _statements(source)
        if len(source.strip().splitlines()) > LONG_CELL_LINES or _is_setup(body) or _calls_record(body) \
                or only_figures:
            _tag(cell, "hide-input")
    return nb


LANDING_FIGURE_TAG = "landing-figure"  # the results chapter's cell whose figure the landing page shows


READING_WPM = 200  # words of prose and printed output a reader reads per minute


def describe_figures(nb: dict) -> dict:
    """Alt text and a numbered caption for each figure of an executed notebook, from the figure's words.

    A figure shown under :func:`emocircuits.plots.setup_style` carries its description as its plain-text form
    (title on the first line); it becomes the cell's ``mystnb.image.alt`` and, where the figure is the cell's
    only displayed output, its ``mystnb.figure.caption``. Options a cell sets itself are kept. Returns ``nb``,
    changed in place.
    """
    for cell in nb.get("cells", []):
        shown = [o for o in cell.get("outputs", []) if o.get("output_type") in ("display_data", "execute_result")]
        images = [o for o in shown if "image/png" in o.get("data", {})]
        if not images:
            continue
        text = images[0]["data"].get("text/plain", "")
        text = _joined(text)
        if not text.strip() or text.startswith("<Figure"):
            continue
        title, _, rest = text.partition("\n")
        opts = cell.setdefault("metadata", {}).setdefault("mystnb", {})
        opts.setdefault("image", {}).setdefault("alt", " ".join(f"{title}. {rest}".split()))
        if len(shown) == 1 and len(images) == 1:
            opts.setdefault("figure", {}).setdefault("caption", title)
    return nb


def _word_count(nb: dict) -> int:
    n = 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            n += len(_source(cell).split())
        for out in cell.get("outputs", []):
            text = out.get("text") or out.get("data", {}).get("text/markdown") or ""
            n += len(_joined(text).split())
    return n


def _title(nb: dict, stem: str) -> str:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in _source(cell).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return stem


def write_landing(book_dir: Path, pages: dict[str, dict], records: dict[str, dict]) -> None:
    """``_findings.md`` (the headline findings of this build, with the results chapter's figure) and
    ``_chapters.md`` (each chapter with its reading time), which ``book/intro.md`` includes."""
    lines = ["<!-- Written by emocircuits.staging.stage from the records of the chapters rendered with this page. -->",
             ""]
    found = findings(records)
    if found:
        lines += [f"- {f}" for f in found]
    else:
        lines.append("*This build recorded no headline numbers: run the chapters (`make book`) to fill this in.*")
    figure = _landing_figure(pages)
    if figure is not None:
        png, alt, caption = figure
        (book_dir / "images").mkdir(exist_ok=True)
        (book_dir / "images" / "findings.png").write_bytes(base64.b64decode(png))
        lines += ["", "```{figure} images/findings.png", f":alt: {alt}", ":name: findings-figure", "",
                  f"{caption}. Chapter 07 gives every number behind it, with its baseline.", "```"]
    atomic_write_text(book_dir / "_findings.md", "\n".join(lines) + "\n")
    rows = ["| chapter | reading time |", "| --- | --- |"]
    for stem, nb in pages.items():
        minutes = max(5, 5 * math.ceil(_word_count(nb) / READING_WPM / 5))
        rows.append(f"| {{doc}}`{_title(nb, stem)} </notebooks/{stem}>` | about {minutes} min |")
    atomic_write_text(book_dir / "_chapters.md", "\n".join(rows) + "\n")


def _landing_figure(pages: dict[str, dict]) -> tuple[str, str, str] | None:
    """The base64 PNG, alt text and caption of the figure in the cell tagged ``landing-figure``, if a page has
    one (run :func:`describe_figures` on the pages first)."""
    for nb in pages.values():
        for cell in nb.get("cells", []):
            if LANDING_FIGURE_TAG not in cell.get("metadata", {}).get("tags", []):
                continue
            for out in cell.get("outputs", []):
                png = out.get("data", {}).get("image/png")
                if png:
                    opts = cell.get("metadata", {}).get("mystnb", {})
                    caption = opts.get("figure", {}).get("caption") or "The results chapter's figure"
                    return _joined(png), \
                        opts.get("image", {}).get("alt") or caption, caption
    return None


def _after_carriage_returns(text: str) -> str:
    """Each line as a terminal leaves it: the part after its last carriage return (a line that ends with one
    keeps the part before it)."""
    lines = []
    for line in text.split("\n"):
        parts = [p for p in line.split("\r") if p]
        lines.append(parts[-1] if parts else "")
    return "\n".join(lines)


# a tqdm line: "train: 40%|####      | 4/10 [00:01<00:02, 2.9it/s]"
_PROGRESS_BAR = re.compile(r"\d+%\||\[\d+:\d+<|\d(?:it|s)/(?:s|it)\]")


def tidy_streams(nb: dict) -> dict:
    """An executed notebook's printed output as a Jupyter front end shows it, for a static page.

    A progress bar (tqdm) writes each update as its own output, starting
    with a carriage return; a front end redraws the line in place, while a
    rendered page would print every update. Within each cell, consecutive
    outputs of one stream (stdout, stderr) are joined and every line keeps
    only what follows its last carriage return. A page is read, not
    watched: progress bars (on stderr) are left out of it altogether, while
    other stderr lines (a warning) stay for the reader, and the browser
    check, to see. Other outputs are left alone. Returns ``nb``, changed in
    place.
    """
    for cell in nb.get("cells", []):
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") != "stream":
                outputs.append(out)
                continue
            text = _joined(out["text"])
            prev = outputs[-1] if outputs else None
            if prev is not None and prev.get("output_type") == "stream" and prev["name"] == out["name"]:
                prev["text"] += text
            else:
                outputs.append({**out, "text": text})
        for out in outputs:
            if out.get("output_type") == "stream":
                out["text"] = _after_carriage_returns(out["text"])
                if out["name"] == "stderr":
                    out["text"] = "".join(line for line in out["text"].splitlines(keepends=True)
                                          if not _PROGRESS_BAR.search(line))
        if "outputs" in cell:
            cell["outputs"] = [o for o in outputs if o.get("output_type") != "stream" or o["text"].strip()]
    return nb
