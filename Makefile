# The two set-up commands of the README: `make run` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: run test test-unit lint lock test-python test-worker screenshots deps deps-dev deps-system deps-node bench demo chaos clean \
	providers-json

# Installs come from the locks only, every file checked against its hash (`make lock` rewrites them).
PIP_INSTALL := $(PIP) install -q --disable-pip-version-check --require-hashes
LOCK := $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links

$(VENV)/.stamp-runtime: requirements.lock
	@./scripts/install-system-deps.sh --venv-only
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r requirements.lock
	@touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-runtime requirements-dev.lock
	$(PIP_INSTALL) -r requirements-dev.lock
	@touch $@

deps: $(VENV)/.stamp-runtime
deps-dev: $(VENV)/.stamp-dev

deps-system:
	@./scripts/install-system-deps.sh

deps-node:
	@if [ -f worker/package.json ]; then cd worker && { [ -f package-lock.json ] && npm ci --no-audit --no-fund --silent || npm install --no-audit --no-fund --silent; }; fi

## The service on loopback with embedded defaults (no Redis: file lock, SQLite state under ./var).
run: deps
	$(VENV)/bin/gunicorn -c gunicorn.conf.py --bind 127.0.0.1:$(PORT) app:app

## Rewrites requirements.lock and requirements-dev.lock (with hashes) from requirements*.txt.
lock: deps-dev
	$(LOCK) -o requirements.lock requirements.txt
	$(LOCK) -o requirements-dev.lock requirements-dev.txt

## ruff (lint) and mypy (types) over the code; configured in pyproject.toml. `make test` runs it first.
lint: deps-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## Everything the tests need, then lint and the whole suite (Worker tests on Miniflare, then pytest).
test: deps-system deps-dev deps-node
	$(MAKE) --no-print-directory lint
	@if [ -f worker/package.json ]; then $(MAKE) --no-print-directory test-worker; fi
	$(MAKE) --no-print-directory test-python

## On PYTEST_WORKERS processes (pytest-xdist; 0 = in this process). --dist loadfile keeps each file on one worker, so a
## module-scoped server is started once; harness/ports.py gives each worker its own ports.
PYTEST_WORKERS ?= 2
test-python:
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

## The unit tier only (tests/unit: no socket, no subprocess): seconds, no system package needed.
test-unit: deps-dev
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

test-worker:
	cd worker && npm test

## Pictures of the operator console (desktop, 390 px phone, one email, the login form) from headless Chromium
## through Selenium and Debian's chromedriver, written to docs/console*.png for the README. Not in CI: tests only assert.
screenshots: deps-system deps-dev
	$(PY) -m scripts.console_screenshots

## Benchmarks (bench/RESULTS.md). Starts its own servers on loopback.
bench: deps-system deps-dev deps-node
	$(PY) -m bench.run_all

## A one-command demo of the whole system on loopback; Ctrl-C stops everything.
demo: deps-system deps-dev deps-node
	$(PY) -m scripts.demo

## The full-length chaos run (300 emails, production-like timeouts); writes bench/CHAOS.md. Not in CI.
chaos: deps-system deps-dev deps-node
	$(PY) -m scripts.chaos

## Rewrites worker/src/providers.generated.json (the Worker's allow-list) from email_processing/providers/.
providers-json:
	$(PY) -m scripts.providers_json

clean:
	rm -rf $(VENV) var .pytest_cache worker/node_modules
