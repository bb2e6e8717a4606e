# Two entry points; each installs what it needs first (tools/bootstrap.sh is idempotent).
# `make test` checks the code style (ruff, settings in pyproject.toml) before the tests.
PYTHON := .venv/bin/python

.PHONY: setup demo test

setup:
	bash tools/bootstrap.sh

demo: setup
	$(PYTHON) tools/demo.py

test: setup
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q
