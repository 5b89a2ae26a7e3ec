# `make test` and `make reports`; `make lab` opens the notebooks in JupyterLab. Each creates or
# reuses .venv and installs the project (editable, with its dev extra) into it first, under
# constraints.txt (the exact torch/torchvision pair); a stamp skips the install when
# pyproject.toml and constraints.txt have not changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: test lint reports lab install clean gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# ruff (a small rule set, pyproject.toml) and the import contracts (one direction, no cycles).
lint: $(STAMP)
	$(VENV)/bin/ruff check ltp_core tests data
	$(VENV)/bin/lint-imports

# Lint, unit tests, then nbval over notebooks/ with the `ci` profile's sizes (LTP_PROFILE=ci).
test: lint
	LTP_PROFILE=ci $(PY) -m pytest

# Every notebook executed by papermill with its own defaults into reports/default/.
reports: $(STAMP)
	$(VENV)/bin/ltp-reports --profile default --output-dir reports/default

# JupyterLab on notebooks/, in the project's environment: its bin/ first on PATH and its kernel spec
# preferred, so the notebooks' `python3` kernel is this .venv's Python. LAB_ARGS adds options,
# e.g. `make lab LAB_ARGS="--no-browser --port=8899"`.
lab: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" JUPYTER_PREFER_ENV_PATH=1 $(VENV)/bin/jupyter lab --notebook-dir=notebooks $(LAB_ARGS)

# On a CUDA machine that brings its own torch and torchvision (it installs nothing; papermill
# and nbval need not be there): the CUDA tests, then the GPU benchmark, whose JSON goes to
# BENCH_JSON (default reports/benchmarks/<date>-gpu.json). The benchmark runs
# even when a test fails (device time is scarce); the exit status is the first failure's.
GPU_PYTHON ?= python3
CUDA_TESTS := tests/test_pruner.py tests/test_compile.py tests/test_baselines.py tests/test_export.py \
              tests/test_train.py tests/test_bench.py
gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) -m pytest -o addopts="-ra -p no:cacheprovider" -k "(cuda or gpu) and not run_on_cpu" $(CUDA_TESTS); \
	tests=$$?; \
	PYTHONPATH=. $(GPU_PYTHON) -m ltp_core.engine.bench --preset gpu $(if $(BENCH_JSON),--output $(BENCH_JSON)); \
	bench=$$?; \
	exit $$(( tests ? tests : bench ))

clean:
	rm -rf $(VENV) reports/default reports/ci
