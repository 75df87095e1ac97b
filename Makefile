# Two commands for a fresh machine:
#   make run    - the service on its embedded default (SQLite, file broker, console/outbox)
#   make test   - lint, types, template check and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint demo bench lock clean

$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements-dev.lock -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/aftercare run

demo: $(STAMP)
	$(BIN)/aftercare demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy aftercare
	$(BIN)/lint-imports
	$(BIN)/bandit -q -r aftercare -ll
	$(BIN)/aftercare check

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench

# Re-pin every dependency after changing pyproject.toml: runtime, then runtime + dev.
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install --quiet --upgrade pip
	.lockenv/bin/python -m pip install --quiet .
	{ echo '# Runtime dependencies, pinned (what the Docker image installs). Regenerate with: make lock'; \
	  .lockenv/bin/python -m pip freeze --exclude-editable | grep -iv '^aftercare'; } > requirements.lock
	.lockenv/bin/python -m pip install --quiet '.[dev]'
	{ echo '# Runtime + development dependencies, pinned (what make test installs). Regenerate with: make lock'; \
	  .lockenv/bin/python -m pip freeze --exclude-editable | grep -iv '^aftercare'; } > requirements-dev.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
