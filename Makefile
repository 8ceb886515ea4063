# Two commands on a fresh machine: `make run` (the local stack) and `make test` (every test).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS := $(VENV)/.tools
AZURITE := node_modules/.bin/azurite

.PHONY: run test lint format install clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# Azurite comes from npm (pure JavaScript); the lock file pins it.
$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $(AZURITE)

# The agents' tests run shellcheck, dash, BusyBox and systemd-analyze (Debian packages).
$(TOOLS):
	command -v shellcheck >/dev/null && command -v dash >/dev/null && \
		command -v busybox >/dev/null && command -v systemd-analyze >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq shellcheck dash busybox systemd; }
	mkdir -p $(VENV) && touch $(TOOLS)

install: $(STAMP) $(AZURITE) $(TOOLS)

run: install
	$(BIN)/python -m devstack up

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
