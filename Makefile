# twinbench: `make run` (the full comparison on the demo data) and `make test` (the tests).
# Both create .venv with pip when it is missing; nothing but Python 3.10+ is needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.twinbench-installed
PYTEST_ARGS ?=

.PHONY: run test test-slow gpu-check clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/twinbench run

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

gpu-check:
	python3 -m bench.gpu_check

clean-venv:
	rm -rf $(VENV)
