"""Section cloud: what remote storage costs. The 24-image run of the cloud tests (the default
pipeline, two layers, two shards) with every file in an S3 bucket (SeaweedFS on 127.0.0.1, through
snakemake-storage-plugin-s3), against the same run on the local disk, run before and after it
(the median is the baseline). Both runs load the same plugins (.cloud-plugins/, `make
cloud-plugins`), so the ratio is the storage alone. Where the extra time goes: the transfers
(every object the run stored, and every input it fetched, timed by themselves with boto3 against
the same server) and the rest (existence and mtime queries, per-job upload and download calls).
No target: the figure says what remote storage costs on one machine, where the network is free."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import ENV, PY, REPO, stage_records

sys.path.insert(0, str(REPO / "tests" / "cloud"))
PLUGINS = REPO / ".cloud-plugins"
CONFIG = {"dataset": {"name": "sample", "max_images": 24, "seed": 2}, "layers": ["stem", "block3"],
          "shards": 2, "batch_size": 4, "device": "cpu", "k": 4, "units": 4,
          "occlusion": {"examples": 1, "units": 1, "stride": 56}}


def _run(work: Path, config: dict, *args: str) -> tuple[float, str]:
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(PLUGINS), ENV["PYTHONPATH"]])}
    t = time.perf_counter()
    r = subprocess.run([PY, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
                        "config.yaml", "--cores", "2", *args], cwd=work, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stdout[-2000:] + r.stderr[-3000:])
    return time.perf_counter() - t, r.stdout + r.stderr


def bench_cloud(tmp: Path, max_images: int | None = None) -> dict:
    if not (PLUGINS / "snakemake_storage_plugin_s3").is_dir():
        raise RuntimeError("the cloud section needs the storage plugin and the S3 server: make cloud-plugins")
    sys.path.append(str(PLUGINS))  # boto3, for the bench's own calls to the server
    from s3_server import start_s3_server

    config = {**CONFIG, "dataset": {**CONFIG["dataset"], "max_images": max_images or 24}}
    server = start_s3_server(tmp / "seaweedfs", "bench")
    try:
        locals_ = [_run(tmp / "local-0", config)[0]]
        s3_wall, log = _run(tmp / "s3", config, *server.storage_args("bench/run"))
        locals_.append(_run(tmp / "local-1", config)[0])
        objects = server.keys("bench", "run/")
        fetched = log.count("(retrieve from storage)")  # job inputs fetched (or found local)
        stored = log.count("Storing in storage:")
        # the same bytes moved by themselves: every object down, then up again
        t = time.perf_counter()
        got = server.download("bench", "run/", tmp / "moved")
        down_s = time.perf_counter() - t
        t = time.perf_counter()
        server.upload(tmp / "moved", "bench", "again")
        up_s = time.perf_counter() - t
        s3_stages = stage_records(tmp / "moved")
    finally:
        server.stop()
    base = statistics.median(locals_)
    return {"local_walls": locals_, "s3_wall": s3_wall, "ratio": s3_wall / base,
            "objects": len(objects), "mb": sum(o["size"] for o in objects.values()) / 1e6,
            "stored": stored, "fetched": fetched, "files_moved": len(got), "up_s": up_s,
            "down_s": down_s, "local_stages": stage_records(tmp / "local-1"), "s3_stages": s3_stages}


def rows(res: dict) -> list[tuple]:
    base = statistics.median(res["local_walls"])
    return [("24-image run with every file in S3 (SeaweedFS on 127.0.0.1) / the same run on local disk",
             f"{res['ratio']:.2f} ({res['s3_wall']:.0f} vs {base:.0f} s)", "none (reported)", True)]


def stage_lines(res: dict) -> list[str]:
    base = statistics.median(res["local_walls"])
    extra = res["s3_wall"] - base
    jobs_local = sum(s["s"] for s in res["local_stages"].values())
    jobs_s3 = sum(s["s"] for s in res["s3_stages"].values())
    return [f"S3 against local: {extra:+.0f} s wall. The jobs themselves: {jobs_s3:.0f} s vs "
            f"{jobs_local:.0f} s (summed benchmark times). Transfers: {res['stored']} uploads and "
            f"{res['fetched']} job inputs from storage; moving all {res['objects']} objects ({res['mb']:.0f} MB) "
            f"by themselves takes {res['up_s']:.1f} s up and {res['down_s']:.1f} s down; the rest "
            f"of the extra is per-file storage queries and per-job upload/download calls."]
