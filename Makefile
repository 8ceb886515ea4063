# Two commands on a fresh machine: `make run` (the local stack) and `make test` (every test).
# The suite runs on the Python the function app runs on in Azure (infra/main.bicep pythonVersion):
# 3.13, the first whose host worker (azure-functions-runtime) the indexing test can run.
PYTHON_VERSION := 3.13
# python3.13 on PATH, else a pyenv install of it (pyenv's shim exists but fails when 3.13 is not
# the selected version, so each candidate must actually run).
PYENV_ROOT ?= $(or $(shell pyenv root 2>/dev/null),$(HOME)/.pyenv)
PYTHON ?= $(shell for p in python$(PYTHON_VERSION) $$(ls -d $(PYENV_ROOT)/versions/$(PYTHON_VERSION).*/bin/python$(PYTHON_VERSION) 2>/dev/null); do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] != ($(subst .,$(comma),$(PYTHON_VERSION))))' 2>/dev/null && { echo $$p; break; }; done)
comma := ,
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS := $(VENV)/.tools
AZURITE := node_modules/.bin/azurite

.PHONY: run test lint format install clean

# A venv made with another Python (an older checkout) is rebuilt, not reused.
$(STAMP): requirements.txt requirements-dev.txt
	@test -n "$(PYTHON)" || { echo "Python $(PYTHON_VERSION) not found (set PYTHON=...)" >&2; exit 1; }
	$(BIN)/python -c 'import sys; sys.exit(sys.version_info[:2] != ($(subst .,$(comma),$(PYTHON_VERSION))))' 2>/dev/null || \
		{ rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# Azurite and Kusto.Language come from npm (pure JavaScript); the lock file pins them.
$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $(AZURITE)

# The agents' tests run shellcheck, dash, BusyBox and systemd-analyze (Debian packages).
$(TOOLS): $(STAMP)
	command -v shellcheck >/dev/null && command -v dash >/dev/null && \
		command -v busybox >/dev/null && command -v systemd-analyze >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq shellcheck dash busybox systemd; }
	touch $(TOOLS)

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
