# One-word entry points. `make demo` and `make test` set up everything they need in .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fresh lint docs-check clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) train.py -c demo/digits.yaml --resume auto

lint: $(STAMP)
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q tests

# every command of README.md and docs/ that runs on a CPU without data (part of make test too)
docs-check: $(STAMP)
	$(PY) -m pytest -q tests/test_docs.py

# the suite as on a fresh machine: SLURM's tools, caches, /tmp and the network hidden (docs/testing.md)
test-fresh: $(STAMP)
	PYTHON=$(PY) tests/fresh_machine.sh -q tests

clean:
	rm -rf $(VENV) output .pytest_cache
