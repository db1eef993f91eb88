#!/usr/bin/env bash
# The cluster test: bring up a one-node SLURM on 127.0.0.1 (Debian's slurm-wlm and munge), run the
# tiny pipeline through snakemake-executor-plugin-slurm with profiles/slurm and several shards,
# check that the jobs went through SLURM (its job-completion log lists them) and that the top-k
# tables equal those of a local run, then tear everything down. Needs root. Usage:
#   bash tests/cluster/run.sh            (make test-slurm)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
WORK=$(mktemp -d /tmp/unitscope-slurm.XXXXXX)
RUN=$WORK/run
mkdir -p "$RUN/state" "$RUN/slurmd"
# Job steps (srun inside a job) read the default path, so the config goes to /etc/slurm; any
# existing one is put back afterwards.
export SLURM_CONF=/etc/slurm/slurm.conf
BACKUP=$WORK/slurm.conf.orig

say() { echo "[cluster-test] $*"; }
cleanup() {
  say "tearing down"
  scancel --user=root >/dev/null 2>&1 || true
  [ -f "$RUN/slurmd.pid" ] && kill "$(cat "$RUN/slurmd.pid")" 2>/dev/null || true
  [ -f "$RUN/slurmctld.pid" ] && kill "$(cat "$RUN/slurmctld.pid")" 2>/dev/null || true
  [ -f "$RUN/munged.pid" ] && kill "$(cat "$RUN/munged.pid")" 2>/dev/null || true
  sleep 1
  if [ -f "$BACKUP" ]; then cp "$BACKUP" "$SLURM_CONF"; else rm -f "$SLURM_CONF"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  say "installing slurm-wlm and munge"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
# the SLURM executor plugin lives outside the main environment: importing it runs SLURM commands,
# which would slow every other snakemake start on a machine with SLURM installed
PLUGINS=$REPO/.cluster-plugins
if [ ! -d "$PLUGINS/snakemake_executor_plugin_slurm" ]; then
  "$PY" -m pip install -q --target "$PLUGINS" --no-deps snakemake-executor-plugin-slurm==2.8.0 \
    snakemake-executor-plugin-slurm-jobstep==0.6.1 throttler==1.2.3
fi

say "starting munged, slurmctld, slurmd"
mkdir -p /etc/munge /var/run/munge /var/lib/munge /var/log/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chmod 400 /etc/munge/munge.key
munged --force --socket="$RUN/munge.socket" --pid-file="$RUN/munged.pid" \
  --log-file="$RUN/munged.log" --seed-file="$RUN/munge.seed"
mkdir -p /etc/slurm
[ -f "$SLURM_CONF" ] && cp "$SLURM_CONF" "$BACKUP"
sed "s|@RUN@|$RUN|g" "$REPO/tests/cluster/slurm.conf.in" > "$SLURM_CONF"
echo "AuthInfo=socket=$RUN/munge.socket" >> "$SLURM_CONF"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N localhost
for i in $(seq 1 30); do
  sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed" && break
  sleep 1
done
sinfo

CONFIG="{dataset: {name: sample, max_images: 12, seed: 2}, layers: [stem, block3], shards: 3,
  batch_size: 4, device: cpu, projection: none, k: 4, units: 4,
  occlusion: {examples: 1, units: 1, stride: 56}}"
mkdir -p "$WORK/slurm" "$WORK/local"
echo "$CONFIG" > "$WORK/slurm/config.yaml"
echo "$CONFIG" > "$WORK/local/config.yaml"
export PATH=$(dirname "$PY"):$PATH

say "local run"
(cd "$WORK/local" && "$PY" -m snakemake -s "$REPO/Snakefile" --configfile config.yaml --cores 2 --quiet)

say "SLURM run"
(cd "$WORK/slurm" && PYTHONPATH=$PLUGINS "$PY" -m snakemake -s "$REPO/Snakefile" \
   --configfile config.yaml --profile "$REPO/profiles/slurm" \
   --slurm-status-command squeue --slurm-no-account --default-resources mem_mb=1000 runtime=30 \
   --set-resources inputs:cpus_per_task=1 activations:cpus_per_task=2 inputs:mem_mb=1000 \
                   activations:mem_mb=2000 --set-threads inputs=1 activations=2 --jobs 4 \
   --resources cpus_per_task=2 mem_mb=4000)

say "checking"
"$PY" - "$WORK" "$RUN/jobcomp.log" <<'PY'
import sys, re
from pathlib import Path
import pandas as pd
work, log = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
import subprocess
jobs = re.findall(r"JobId=(\d+) .*?Name=(\S+) .*?JobState=(\S+)", log)
print(f"SLURM's job-completion log lists {len(jobs)} jobs:")
for job_id, name, state in sorted(jobs, key=lambda j: int(j[0])):
    info = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    comment = re.search(r"Comment=(\S+)", info)
    print(f"  {job_id:>4} {state:<10} {comment.group(1) if comment else name}")
# dataset, layers, classes, one bundle of the three shard jobs, one job per layer, the gallery
assert len(jobs) >= 6, "too few jobs went through SLURM"
assert all(state == "COMPLETED" for _, _, state in jobs), "a SLURM job did not complete"
res = "results/sample/efficientnet_lite0"
for layer in ("stem", "block3"):
    a = pd.read_parquet(work / "slurm" / res / f"topk/{layer}.parquet")
    b = pd.read_parquet(work / "local" / res / f"topk/{layer}.parquet")
    pd.testing.assert_frame_equal(a, b)
    print(f"top-k of {layer}: SLURM run == local run ({len(a)} rows)")
print("1 passed, 0 failed")
PY
