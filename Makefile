# Ordinaut developer commands. `make dev` runs everything; `make test` runs the suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
PYTHON    ?= $(shell ops/find-python.sh)

.PHONY: help dev test test-containers lint format migrate stop-dev bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt
	@test -n "$(PYTHON)" || { echo "No Python >= 3.12 found (see the message above)." >&2; exit 1; }
	@test -x $(PY) || { echo "Creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "Installing dependencies into $(VENV) ..."
	$(PY) -m pip install --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

.env:
	cp .env.example .env

dev: $(STAMP) .env  ## set up everything and run web + scheduler + worker (Ctrl-C stops all)
	$(PY) manage.py rundev

test: $(STAMP)  ## run the whole test suite (starts its own PostgreSQL and Redis); line coverage >= 85%
	$(PY) -m pytest --cov --cov-report=term $(PYTEST_ARGS)

test-containers: $(STAMP)  ## build the image, run the Compose stack and its smoke test (needs root or a Docker daemon)
	bash ops/containers/test.sh

lint: $(STAMP)  ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

migrate: $(STAMP) .env  ## apply migrations to the configured (or embedded) database
	$(PY) manage.py migrate

stop-dev: $(STAMP)  ## stop the embedded development PostgreSQL and Redis under var/
	$(PY) manage.py devservers stop

bench: $(STAMP)  ## run the benchmarks in bench/ and print their figures
	@for script in bench/api.py bench/scheduler.py bench/queue.py; do \
		echo "== $$script"; $(PY) $$script || exit 1; done

clean:  ## remove the virtualenv (var/ keeps your development data)
	rm -rf $(VENV) .pytest_cache .ruff_cache
