# `make help` lists the targets. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup run index ask test lint format test-slow test-browser ci eval bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU build of PyTorch; an unpinned torch would pull several GB of CUDA packages
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(STAMP) ## create .venv and install threatqa with its dependencies

run: $(STAMP) ## start the web app (builds the index from docs/ when missing or stale)
	$(BIN)/python app.py

index: $(STAMP) ## build or update the index from docs/
	$(BIN)/threatqa index

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint ## lint, then the fast test suite (offline, a minute or two)
	$(BIN)/pytest

test-slow: $(STAMP) ## the slow tests (evaluation targets, kill-mid-build)
	$(BIN)/pytest -m slow

test-browser: $(STAMP) ## real-browser tests with Debian's Chromium (installs it when missing)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	$(BIN)/pytest -m browser

ci: test test-slow test-browser ## everything CI runs

eval: $(STAMP) ## retrieval accuracy on ../shared/eval, beside plain BM25
	$(BIN)/threatqa eval

bench: $(STAMP) ## benchmarks (figures against a baseline from the same run)
	$(BIN)/python benchmarks/run.py
