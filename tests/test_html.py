"""The rendered book, checked in a real browser (headless Chromium driven by Selenium).

The QUICK book (every chapter executed by papermill, rendered by Jupyter Book)
is served on 127.0.0.1 and each chapter page is opened: it loads without
console errors, its figures are there, decoded and described (alt text),
no cell shows an error or prints to stderr, no output is wider than the
column, code takes at most 15% of the page's height, each numbered section
has a boxed result and the chapter a summary,
the sidebar reaches every chapter, launch buttons point at Colab and Binder,
circuitsvis views render from their inlined bundle, and no page is heavy.
The start page shows this build's findings, their figure and every chapter.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [p.stem for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))]
MAX_PAGE_MB = 8.0  # a circuitsvis view inlines its 1.3 MB bundle; pages stay well under this
MAX_CODE_SHARE = 0.15  # of a chapter page's height, with folded cells folded (emocircuits.staging.present_code)

# Console messages a page may log without being broken. pydata-sphinx-theme
# logs the first on a visit with nothing in localStorage (every visit of a
# fresh headless browser) and then picks "auto"; it is not ours to fix.
ALLOWED_CONSOLE = ('"Got invalid theme mode: . Resetting to auto."',)


@pytest.fixture(scope="module")
def site(quick_book):
    html = quick_book.html
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield html, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("headless Chromium is missing: `make test` installs Debian's chromium and chromium-driver; "
                    "install them with apt-get install chromium chromium-driver")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for drivers online
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver, url):
    driver.get(url)
    deadline = time.time() + 30
    while driver.execute_script("return document.readyState") != "complete" and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # let module scripts (circuitsvis) run
    return [e for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in ALLOWED_CONSOLE)]


def _nav_pages(driver):
    hrefs = driver.execute_script(
        "return [...document.querySelectorAll('nav a.reference.internal')].map(a => a.href)")
    return {h.split("#")[0].rsplit("/", 1)[-1].removesuffix(".html") for h in hrefs}


def test_every_chapter_page_in_a_browser(site, browser):
    html_dir, base = site
    index = (html_dir / "index.html").read_text()
    assert 'rel="icon"' in index and "Refresh" in index, "index.html is not the redirect page with the book's icon"
    errors = _open(browser, f"{base}/index.html")
    assert not errors, f"index.html logs console errors: {errors}"
    assert set(CHAPTERS) <= _nav_pages(browser), "the sidebar of the start page misses chapters"
    assert "methods" in _nav_pages(browser), "the sidebar misses the methods-notes appendix"
    problems = _landing_page_problems(browser, base)
    for stem in CHAPTERS:
        page = html_dir / "notebooks" / f"{stem}.html"
        assert page.exists(), f"{stem}: no rendered page {page}"
        mb = page.stat().st_size / 2**20
        if mb > MAX_PAGE_MB:
            problems.append(f"{stem}: page weighs {mb:.1f} MB (> {MAX_PAGE_MB})")
        errors = _open(browser, f"{base}/notebooks/{stem}.html")
        if errors:
            problems.append(f"{stem}: console errors {errors}")
        imgs = browser.execute_script(
            "return [...document.querySelectorAll('article img')].map(i => [i.src, i.complete ? i.naturalWidth : 0,"
            " (i.getAttribute('alt') || '').trim()])")
        if not imgs:
            problems.append(f"{stem}: no figure on the page")
        problems += [f"{stem}: figure not decoded: {src[:80]}" for src, w, _ in imgs if not w]
        problems += [f"{stem}: figure without alt text: {src[-40:]}" for src, _, alt in imgs
                     if len(alt) < 10 or re.fullmatch(r"\S+\.(png|svg|jpe?g)", alt)]  # Sphinx's default: the file
        wide = browser.execute_script(
            "const right = document.querySelector('article').getBoundingClientRect().right;"
            "return [...document.querySelectorAll('article .cell_output, article .cell_output pre,"
            " article .cell_output table, article .cell_input pre')].filter(e => e.scrollWidth > e.clientWidth + 2"
            " || e.getBoundingClientRect().right > right + 2).map(e => e.innerText.slice(0, 60))")
        problems += [f"{stem}: a cell wider than the column: {t!r}" for t in wide]
        code = browser.execute_script(
            "const art = document.querySelector('article'); let code = 0;"
            "art.querySelectorAll('.cell_input').forEach(e => {"
            " if (!e.closest('details:not([open])')) code += e.getBoundingClientRect().height; });"
            "return code / art.getBoundingClientRect().height")
        if code > MAX_CODE_SHARE:
            problems.append(f"{stem}: code takes {code:.0%} of the page's height (at most {MAX_CODE_SHARE:.0%})")
        n_stderr = browser.execute_script("return document.querySelectorAll('.cell_output .output.stderr').length")
        if n_stderr:
            problems.append(f"{stem}: {n_stderr} output(s) printed to stderr on the page")
        headings = browser.execute_script(
            "return [...document.querySelectorAll('article h2')].map(h => h.innerText.trim())")
        if not any(h.startswith("Summary") for h in headings):
            problems.append(f"{stem}: no Summary section (headings: {headings})")
        unboxed = browser.execute_script(
            "return [...document.querySelectorAll('article section > h2')].filter(h => /^\\d+\\./.test(h.innerText))"
            ".filter(h => !h.parentElement.querySelector('.admonition.result')).map(h => h.innerText)")
        problems += [f"{stem}: section {h!r} ends without a boxed result (emocircuits.page.result)" for h in unboxed]
        n_err = browser.execute_script(
            "return document.querySelectorAll('.cell_output .output.traceback, .cell_output .output.error').length")
        if n_err:
            problems.append(f"{stem}: {n_err} cell(s) show an error output")
        if set(CHAPTERS) - _nav_pages(browser):
            problems.append(f"{stem}: the sidebar misses {sorted(set(CHAPTERS) - _nav_pages(browser))}")
        source = browser.page_source
        if f"colab.research.google.com/github/emocircuits/emocircuits/blob/main/notebooks/{stem}.ipynb" not in source:
            problems.append(f"{stem}: no Colab launch button")
        if "mybinder.org" not in source:
            problems.append(f"{stem}: no Binder launch button")
        if "Run this chapter on a GPU" not in browser.execute_script("return document.body.innerText"):
            problems.append(f"{stem}: the GPU admonition is missing")
        outputs = browser.execute_script("return [...document.querySelectorAll('.cell_output')].map(o => o.innerText)")
        for i, text in enumerate(outputs):  # a progress bar shows its last state, as in Jupyter, not every update
            bars = [line.split(":")[0] for line in text.splitlines() if "%|" in line]
            if len(bars) != len(set(bars)):
                problems.append(f"{stem}: output {i} prints a progress bar's updates: {sorted(set(bars))}")
        views = browser.execute_script(
            "return [...document.querySelectorAll('div[id^=\"circuits-vis-\"]')].map(d => d.innerText.length)")
        problems += [f"{stem}: circuitsvis view {i} rendered nothing" for i, n in enumerate(views) if n == 0]
    assert not problems, "\n".join(problems)


def _landing_page_problems(browser, base) -> list[str]:
    """The start page shows this build's findings (sentences with numbers), its figure with alt text, and every
    chapter with a reading time."""
    problems = [f"landing page: console errors {e}" for e in _open(browser, f"{base}/book/intro.html")]
    found = browser.execute_script(
        "const s = document.querySelector('section#what-this-build-found');"
        "return s ? [...s.querySelectorAll('li')].map(li => li.innerText) : null")
    if found is None:
        return problems + ["landing page: no 'What this build found' section"]
    with_numbers = [f for f in found if any(ch.isdigit() for ch in f) and "[" in f]
    if not 4 <= len(with_numbers) == len(found) <= 6:
        problems.append(f"landing page: {len(found)} findings, {len(with_numbers)} with a number and interval "
                        "(want 4-6, each with one)")
    imgs = browser.execute_script(
        "return [...document.querySelectorAll('section#what-this-build-found img')].map(i => "
        "[i.complete ? i.naturalWidth : 0, (i.getAttribute('alt') || '').trim()])")
    if not imgs or not all(w and len(alt) >= 10 for w, alt in imgs):
        problems.append(f"landing page: the findings figure is missing, undecoded or without alt text: {imgs}")
    text = browser.execute_script("return document.body.innerText")
    missing = [stem for stem in CHAPTERS if stem[:2] + " ·" not in text]
    if missing or text.count("min") < len(CHAPTERS):
        problems.append(f"landing page: the chapter list misses {missing} or their reading times")
    return problems


def test_a_circuitsvis_view_renders_offline(site, browser):
    html_dir, base = site
    pages = [s for s in CHAPTERS if 'id="circuits-vis-' in (html_dir / "notebooks" / f"{s}.html").read_text()]
    assert pages, "no chapter page carries a circuitsvis view"
    _open(browser, f"{base}/notebooks/{pages[0]}.html")
    n_nodes = browser.execute_script(
        "return document.querySelector('div[id^=\"circuits-vis-\"]').querySelectorAll('*').length")
    assert n_nodes > 10, f"{pages[0]}: the circuitsvis view has {n_nodes} elements; it did not render"
