# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=
STAMP  := $(VENV)/.installed

.PHONY: run test install lint typecheck schemas clean

# The first install takes a few minutes: pip shows each package and, on a terminal, a progress bar
# per download (quiet in CI, where its log would only grow).
PIP_PROGRESS := $(if $(CI),--quiet,--progress-bar on)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing Bulwark and its dependencies into $(VENV) (first run, or pyproject.toml changed)..."
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install $(PIP_PROGRESS) -e '.[dev]'
	@touch $(STAMP)
	@echo "Installed."

install: $(STAMP)

run: $(STAMP)
	$(BIN)/bulwark up $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/python -m proto.schemas_export

test: $(STAMP) lint typecheck
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
