# The README's two commands: `make test` (set-up + unit tests + every notebook under nbval) and
# `make main` (the main job). Everything installs into .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
export SCA_MODE ?= fast

.PHONY: all test unit nbval main notebooks clean-notebooks sync-url data venv distclean book book-check

all: test

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

venv: $(VENV)/.installed

## make test: unit tests and every notebook executed by nbval (fast mode), in one pytest run
test: $(VENV)/.installed
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=900 -p no:cacheprovider

unit: $(VENV)/.installed
	$(PY) -m pytest tests

nbval: $(VENV)/.installed
	$(PY) -m pytest notebooks --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=900

## make main: the main job: the `quick` ablation grid (4 variants x 3 seeds, synthetic devkit; data and stand-in included)
## with its summary table and figures in results/quick/. `make notebooks` re-executes every notebook in place.
main: $(VENV)/.installed
	$(PY) -m sca_lib.ablate --grid quick

notebooks: $(VENV)/.installed
	$(PY) -m sca_lib.notebooks execute notebooks/*.ipynb

clean-notebooks: $(VENV)/.installed
	$(PY) -m sca_lib.notebooks clean notebooks/*.ipynb

sync-url: $(VENV)/.installed
	$(PY) -m sca_lib.notebooks sync-url

## make book: the README, the executed notebooks (as committed, not re-run) and the results' notes as a static
## site in docs/_build/html (Sphinx + MyST-NB; seconds). Open docs/_build/html/index.html.
book: $(VENV)/.installed
	$(PY) -m sphinx -b html -c docs -q . docs/_build/html

## make book-check: the book, then notebook 01's page in a headless Chromium (docs/_build/page.png; needs
## Debian's chromium-headless-shell or $$SCA_BROWSER)
book-check: book
	$(PY) docs/check_page.py

distclean:
	rm -rf $(VENV) *.egg-info .pytest_cache

## make data: generate the synthetic VOC-format devkits the fast and cpu modes use into data/synthetic/ (under a minute; no internet).
## Real VOC2012 (2 GB): `$(PY) -m sca_lib.data download-voc --root data` (see data/README.md).
data: $(VENV)/.installed
	$(PY) -m sca_lib.data synthetic --variant target --mode fast
	$(PY) -m sca_lib.data synthetic --variant target --mode cpu --version 2
	$(PY) -m sca_lib.data synthetic --variant source --mode fast
	$(PY) -m sca_lib.data synthetic --variant source --mode cpu --version 2
