# The two commands of the README:  make run  (set up, run the default pipeline)  and  make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
CORES ?= all

.PHONY: run test setup clean report

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

run: setup
	$(BIN)/snakemake --cores $(CORES)

report: setup
	$(BIN)/snakemake --report report.zip

test: setup
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf results .snakemake
