# Two entry points; each installs what it needs first (tools/bootstrap.sh is idempotent).
PYTHON := .venv/bin/python

.PHONY: setup demo test

setup:
	bash tools/bootstrap.sh

demo: setup
	$(PYTHON) tools/demo.py

test: setup
	$(PYTHON) -m pytest -q
