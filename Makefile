# The two set-up commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint rig venv bench clean

$(BIN)/gitops-agent: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/gitops-agent

rig:
	scripts/rig-up

lint: venv
	$(BIN)/ruff check agent tests bench demo scripts scripts/release-local
	$(BIN)/mypy
	$(BIN)/lint-imports

test: rig venv lint
	$(BIN)/pytest

demo: rig venv
	$(BIN)/python demo/demo.py

bench: rig venv
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
