# `make help` lists the targets. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the pip that installs the lock, itself hash-checked: the one a venv starts with (23.2 on Python 3.11) does not
# hold a dependency's extra to the locked version (justext's `lxml[html_clean]` took lxml's newest release in
# --require-hashes mode, which then refused it as unpinned); `make lock` writes its hashes
PIP_VERSION := 26.3
PIP_LOCK := requirements-pip.lock

.DEFAULT_GOAL := help
.PHONY: help setup run index test lint format test-slow test-browser chromium axe audit-deps ci eval bench load lock

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock $(PIP_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --only-binary :all: -r $(PIP_LOCK)
	# the CPU build of PyTorch first; an unpinned torch would pull several GB of CUDA packages. Its dependencies
	# are in the lock, so they come hash-checked with the rest
	$(BIN)/pip install --quiet --no-deps torch==2.13.0
	# then exactly the locked versions, each file checked against its sha256 (`make lock` refreshes them), as
	# wheels only: building a source distribution would fetch its build tools unchecked
	$(BIN)/pip install --quiet --require-hashes --only-binary :all: -r requirements.lock
	# and threatqa itself, built with the locked setuptools rather than a freshly fetched one
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
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

test-browser: $(STAMP) chromium axe ## real-browser tests with Debian's Chromium (installs it when missing)
	$(BIN)/pytest -m browser

audit-deps: $(STAMP) ## pip-audit over requirements.lock and requirements-pip.lock (fails on a known vulnerability)
	$(BIN)/python .ci/audit_deps.py requirements.lock $(PIP_LOCK)

ci: audit-deps test chromium axe ## everything CI runs: the README's `make test`, then the slow and browser tests
	$(BIN)/pytest -m "slow or browser"

chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# axe-core (MPL-2.0), the accessibility checker the browser tests inject into the page: fetched from npm at a
# pinned version, its tarball checked against the registry's published integrity, kept out of git in .cache/
AXE_VERSION := 4.10.3
AXE_INTEGRITY := sha512-Xm7bpRXnDSX2YE2YFfBk2FnF0ep6tmG7xPh8iHee8MIcrgq762Nkce856dYtJYLkuIoYZvGfTs/PbZhideTcEg==
AXE_DIR := .cache/axe-core

axe: $(AXE_DIR)/axe.min.js ## fetch axe-core (pinned version, integrity checked) for the browser tests

$(AXE_DIR)/axe.min.js:
	rm -rf $(AXE_DIR) && mkdir -p $(AXE_DIR)
	cd $(AXE_DIR) && npm pack --silent axe-core@$(AXE_VERSION) >/dev/null
	python3 -c "import base64, hashlib, sys; d = open(sys.argv[1], 'rb').read(); \
	got = 'sha512-' + base64.b64encode(hashlib.sha512(d).digest()).decode(); \
	sys.exit(0 if got == sys.argv[2] else f'axe-core tarball integrity {got} is not the pinned {sys.argv[2]}')" \
	    $(AXE_DIR)/axe-core-$(AXE_VERSION).tgz '$(AXE_INTEGRITY)'
	tar -xzf $(AXE_DIR)/axe-core-$(AXE_VERSION).tgz -C $(AXE_DIR) --strip-components=1 package/axe.min.js package/LICENSE
	rm $(AXE_DIR)/axe-core-$(AXE_VERSION).tgz

lock: ## re-resolve the dependencies into requirements.lock and pip into requirements-pip.lock, with the sha256 of every file (in a scratch venv)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet uv==0.13.8
	echo 'pip==$(PIP_VERSION)' | .lock-venv/bin/uv pip compile - --no-config --generate-hashes --no-annotate \
	    --custom-compile-command 'make lock' --quiet --output-file $(PIP_LOCK)
	# the dependencies are resolved by the same pip that installs them
	.lock-venv/bin/pip install --quiet --require-hashes --only-binary :all: -r $(PIP_LOCK)
	.lock-venv/bin/pip install --quiet torch==2.13.0 && .lock-venv/bin/pip install --quiet '.[dev]'
	# pip's resolution fixes every version; uv writes them out for any platform and any Python from this one up,
	# with the hashes of all their files. torch stays out of the lock (set-up installs this build of it first),
	# and so does pip ($(PIP_LOCK) has it)
	.lock-venv/bin/pip freeze --all --exclude threatqa > .lock-venv/pins.txt
	.lock-venv/bin/pip download --quiet --no-deps --dest .lock-venv/torch torch==2.13.0
	.lock-venv/bin/uv pip compile pyproject.toml --extra dev --constraints .lock-venv/pins.txt \
	    --find-links .lock-venv/torch --no-emit-package torch --no-emit-package pip --no-config \
	    --universal --python-version "$$(.lock-venv/bin/python -c 'import platform; print(platform.python_version())')" \
	    --generate-hashes --no-annotate --custom-compile-command 'make lock' --quiet \
	    --output-file .lock-venv/requirements.lock
	mv .lock-venv/requirements.lock requirements.lock && rm -rf .lock-venv

eval: $(STAMP) ## retrieval accuracy on ../shared/eval, beside plain BM25
	$(BIN)/threatqa eval

bench: $(STAMP) ## benchmarks (figures against a baseline from the same run)
	$(BIN)/python benchmarks/run.py

load: $(STAMP) ## load benchmark: 32 clients for 2 minutes on 127.0.0.1
	$(BIN)/python benchmarks/load.py
