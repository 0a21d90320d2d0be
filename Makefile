# Two commands do all set-up on a fresh machine:
#   make demo   installs vislab into .venv and runs `vislab demo` on embedded data
#   make test   installs vislab with its test extras and runs ruff + the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install demo test test-all bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/vislab demo

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q -m "" $(PYTEST_ARGS)
