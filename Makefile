# twinbench: `make run` (the full comparison on the demo data) and `make test` (the tests).
# Both create .venv with pip when it is missing; nothing but Python 3.10+ is needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.twinbench-installed
PYTEST_ARGS ?=
# twinbench run options, e.g. make run RUN_ARGS="--seed 200 --repeats 5"
RUN_ARGS ?=

.PHONY: run test test-slow gpu-check gpu-vendor clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/twinbench run $(RUN_ARGS)

# Three pytest processes: framework-free tests (workers in subprocesses), then the TF and the
# torch in-process tests. One process never imports both frameworks (see tests/conftest.py).
test: $(STAMP)
	$(PY) -m pytest -m "not slow" --framework none $(PYTEST_ARGS)
	$(PY) -m pytest -m "not slow" --framework torch $(PYTEST_ARGS)
	$(PY) -m pytest -m "not slow" --framework tf $(PYTEST_ARGS)

# Every framework's slow tests run even when an earlier one fails; the target fails if any did.
test-slow: $(STAMP)
	rc=0; \
	$(PY) -m pytest -m slow --framework none $(PYTEST_ARGS) || rc=1; \
	$(PY) -m pytest -m slow --framework torch $(PYTEST_ARGS) || rc=1; \
	$(PY) -m pytest -m slow --framework tf $(PYTEST_ARGS) || rc=1; \
	exit $$rc

gpu-check:
	python3 -m torch_impl.gpu_check

# Keras for the lent GPU machine (PyTorch, Python 3.12, no Keras, no network): Keras and the two of its
# needs that machine lacks, unpacked into .gpu-vendor/site, which gpu_check puts on the keras-torch
# child's path. Carry .gpu-vendor (about 13 MB) with the run.
GPU_PYTHON ?= 3.12
gpu-vendor: $(STAMP)
	rm -rf .gpu-vendor && mkdir -p .gpu-vendor/wheels
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	    -d .gpu-vendor/wheels \
	    "keras==$$($(PY) -c 'import importlib.metadata as m; print(m.version("keras"))')" \
	    "namex==$$($(PY) -c 'import importlib.metadata as m; print(m.version("namex"))')" \
	    "optree==$$($(PY) -c 'import importlib.metadata as m; print(m.version("optree"))')"
	for w in .gpu-vendor/wheels/*.whl; do $(PY) -m zipfile -e "$$w" .gpu-vendor/site; done
	du -sh .gpu-vendor/site

clean-venv:
	rm -rf $(VENV)
