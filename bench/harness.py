"""What every benchmark section shares: where the repository is, a fresh Python for a measurement
(its own peak memory), a Snakemake run in a folder, and the per-stage times and peak memory a run's
benchmark files and logs record."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PY = sys.executable
ENV = {**os.environ, "PATH": os.path.dirname(PY) + os.pathsep + os.environ.get("PATH", ""),
       "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "bench")])}
DEFAULT_OUT = REPO / "bench" / "results" / "latest.json"


def child(code: str, *args: str) -> dict:
    """Run `code` in a fresh Python (its own peak memory); it prints one JSON line last."""
    out = subprocess.run([PY, "-c", code, *args], env=ENV, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def snakemake(work: Path, config: dict, *args: str) -> float:
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    t = time.perf_counter()
    r = subprocess.run([PY, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
                        "config.yaml", "--cores", "2", "--quiet", *args], cwd=work, env=ENV,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stdout[-2000:] + r.stderr[-3000:])
    return time.perf_counter() - t


def stage_records(work: Path, since: float = 0.0) -> dict[str, dict[str, float]]:
    """Seconds and CPU seconds (summed over jobs, from Snakemake's benchmark files) and peak
    memory (MB, the largest job) of each stage: the peak each job logs at its end (the kernel's
    ru_maxrss: exact, where Snakemake's benchmark samples and misses short jobs' peaks). `since`
    (a time.time()) counts only the jobs that ran after it."""
    stages: dict[str, dict[str, float]] = {}
    for tsv in (work / "results").rglob("benchmarks/**/*.tsv"):
        if tsv.stat().st_mtime < since:
            continue
        stage = tsv.parent.name if tsv.parent.name != "benchmarks" else tsv.stem
        with open(tsv) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        rec = stages.setdefault(stage, {"s": 0.0, "cpu_s": 0.0, "max_rss_mb": 0.0})
        rec["s"] += float(row["s"])
        rec["cpu_s"] += float(row.get("cpu_time") or 0)
    for log in (work / "results").rglob("logs/**/*.log"):
        stage = log.parent.name if log.parent.name != "logs" else log.stem
        for line in log.read_text().splitlines():
            if "; peak memory " in line and stage in stages:
                mb = float(line.rsplit("peak memory ", 1)[1].split()[0])
                stages[stage]["max_rss_mb"] = max(stages[stage]["max_rss_mb"], mb)
    return stages
