# Two commands: `make test` and `make reports`. Each creates or reuses .venv and installs the
# project (editable, with its dev extra) into it first; a stamp skips the install when
# pyproject.toml has not changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: test reports install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Unit tests, then nbval over notebooks/ with the `ci` profile's sizes (LTP_PROFILE=ci).
test: $(STAMP)
	LTP_PROFILE=ci $(PY) -m pytest

# Every notebook executed by papermill with its own defaults into reports/default/.
reports: $(STAMP)
	$(VENV)/bin/ltp-reports --profile default --output-dir reports/default

clean:
	rm -rf $(VENV) reports/default reports/ci
