# The two commands of the README:  make run  (set up, run the default pipeline)  and  make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
CORES ?= all

.PHONY: run test test-slow setup clean report browser test-slurm

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@# -qq: setuptools prints a warning at every editable install; errors still show
	$(BIN)/python -m pip install -qq --no-deps -e .
	touch $@

run: setup
	$(BIN)/snakemake --cores $(CORES)

report: setup
	$(BIN)/snakemake --report report.zip

# The gallery test drives headless Chromium (Debian's package); install it where we may.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the gallery browser test will be skipped"; }

test: setup browser
	$(BIN)/python -m pytest -q -m "not slow" tests

# The few tests of tens of seconds each (a VGG16 exported and read back, the hostile-file dry
# runs, the big models against the gradient oracle): CI runs them after make test.
test-slow: setup
	$(BIN)/python -m pytest -q -m slow tests

# A one-node SLURM on 127.0.0.1 runs the tiny pipeline through profiles/slurm (root, ~3 minutes).
test-slurm: setup
	bash tests/cluster/run.sh

clean:
	rm -rf results .snakemake
