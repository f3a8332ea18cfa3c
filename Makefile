# hpa-pipeline: every target sets itself up from a fresh clone (a .venv in the checkout).
# Installing is idempotent: the stamp file is only rebuilt when setup.cfg or pyproject.toml change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HPA    := $(BIN)/hpa-pipe

# make ingest: where the real archives and CSVs are, where the stores go, and the top level size.
DATA ?= data
OUT  ?= data
SIZE ?= 1024
DEMO ?= build/demo

.PHONY: install test test-fast demo bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

demo: install
	$(HPA) --config pipelines/demo.yaml synth --out $(DEMO)

bench: install
	$(BIN)/python -m benchmarks $(BENCH)

clean:
	rm -rf $(VENV) build .pytest_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
