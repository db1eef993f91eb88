# The two commands of the README:  make run  (set up, run the default pipeline)  and  make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
CORES ?= all

.PHONY: run test test-slow setup clean report browser test-slurm test-cloud cloud-plugins

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
	$(BIN)/python -m pytest -q -m "not slow and not cloud" tests

# The few tests of tens of seconds each (a VGG16 exported and read back, the hostile-file dry
# runs, the big models against the gradient oracle): CI runs them after make test.
test-slow: setup
	$(BIN)/python -m pytest -q -m "slow and not cloud" tests

# A one-node SLURM on 127.0.0.1 runs the tiny pipeline through profiles/slurm (root, ~3 minutes).
test-slurm: setup
	bash tests/cluster/run.sh

# The cloud extras (requirements-cloud.txt: the S3 and GCS storage plugins, the Kubernetes and Google
# Batch executors, SeaweedFS's S3 server) go beside the main environment, not into it: importing
# the executors at every snakemake start would slow every other run down.
CLOUD := $(abspath .cloud-plugins)

cloud-plugins: $(CLOUD)/.installed

$(CLOUD)/.installed: requirements-cloud.txt | setup
	rm -rf $(CLOUD)
	$(BIN)/python -m pip install --quiet --no-deps --target $(CLOUD) -r requirements-cloud.txt
	touch $@

# A real S3 server (SeaweedFS) on 127.0.0.1: the pipeline through snakemake-storage-plugin-s3
# against a local run, a rerun, an override, a kill and resume, a folder dataset in the bucket;
# the Kubernetes and Google Batch profiles by dry runs (about 6 minutes).
test-cloud: setup cloud-plugins
	PYTHONPATH=$(CLOUD) PATH=$(CLOUD)/bin:$(PATH) UNITSCOPE_REQUIRE_CLOUD=1 \
	  $(BIN)/python -m pytest -q -m cloud tests/cloud

clean:
	rm -rf results .snakemake
