# The two set-up commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-unit lint docs rig venv bench clean

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

# The documentation site (mkdocs.yml, docs/): --strict fails on a broken link or anchor and
# on a page missing from the nav. mkdocs is installed into the venv on first use.
docs: venv
	@test -x $(BIN)/mkdocs || $(BIN)/pip install --quiet mkdocs
	$(BIN)/mkdocs build --strict --site-dir .site

test: rig venv lint docs
	$(BIN)/pytest

# The unit tier alone: no Docker engine, no rig, under 30 s (tests/unit holds no e2e test;
# the tests that need the engine are under tests/e2e, marked e2e there).
# pytest-xdist spreads the tier over UNIT_WORKERS processes (more than the cores: many
# tests wait on git subprocesses and sockets).
UNIT_WORKERS ?= 4
test-unit: venv
	$(BIN)/pytest -q -n $(UNIT_WORKERS) tests/unit

demo: rig venv
	$(BIN)/python demo/demo.py

bench: rig venv
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .site
