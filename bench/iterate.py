"""Section iterate: what tuning one layer costs. The default run from nothing (wall, and each
stage's time summed over its jobs), then two per-layer changes applied one after the other, as a
person tuning would: `overrides: {block15: {k: 4}}`, then also `{block3: {units: [1, 2, 3]}}`.
For each change: the jobs a dry run plans (by rule and layer), the wall time of the rerun, and its
per-stage breakdown. Targets: the first run <= 120 s, each change <= 20 s, planning jobs of the
changed layer only plus at most one small gallery index job."""
from __future__ import annotations

import copy
import re
import subprocess
import time
from pathlib import Path

import yaml

from harness import ENV, PY, REPO, snakemake, stage_records

CHANGES = [("block15", {"k": 4}), ("block3", {"units": [1, 2, 3]})]
FIRST_RUN_S, CHANGE_S = 120, 20


def planned(work: Path) -> list[list[str]]:
    """[rule, layer] of every job a dry run plans (layer '' for jobs of no layer)."""
    r = subprocess.run([PY, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
                        "config.yaml", "--cores", "2", "--dry-run"], cwd=work, env=ENV,
                       capture_output=True, text=True)
    jobs, rule = [], None
    for line in r.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
            jobs.append([rule, ""])
        m = re.match(r"^\s+wildcards: .*layer=([\w.]+)", line)
        if m and rule:
            jobs[-1][1] = m.group(1)
    return jobs


def bench_iterate(tmp: Path, max_images: int | None = None) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if max_images:
        config["dataset"]["max_images"] = max_images
    work = tmp / "iterate"
    t0 = time.time()
    first = {"wall_s": snakemake(work, config), "stages": stage_records(work, since=t0)}
    changes = []
    config = copy.deepcopy(config)
    for layer, change in CHANGES:
        config.setdefault("overrides", {}).setdefault(layer, {}).update(change)
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        jobs = planned(work)
        t0 = time.time()
        wall = snakemake(work, config)
        other = sorted({j[1] for j in jobs if j[1] and j[1] != layer})
        rest = sorted({j[0] for j in jobs if not j[1] and j[0] != "all"})
        changes.append({"layer": layer, "change": change, "wall_s": wall, "jobs": jobs,
                        "other_layers": other, "layerless_jobs": rest,
                        "stages": stage_records(work, since=t0)})
    return {"images": max_images or 408, "first": first, "changes": changes}


def _stages(stages: dict) -> str:
    return ", ".join(f"{k} {v['s']:.1f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1]["s"]))


def rows(it: dict) -> list:
    out = [(f"iterate: the default run from nothing ({it['images']} images)",
            f"{it['first']['wall_s']:.0f} s", f"<= {FIRST_RUN_S} s", it["first"]["wall_s"] <= FIRST_RUN_S)]
    for c in it["changes"]:
        only = not c["other_layers"] and set(c["layerless_jobs"]) <= {"gallery_index"}
        out.append((f"iterate: overrides {{{c['layer']}: {c['change']}}} rerun "
                    f"({len(c['jobs']) - 1} jobs: {c['layer']}'s"
                    + (f", and {', '.join(c['other_layers'] + c['layerless_jobs'])}"
                       if c["other_layers"] or c["layerless_jobs"] else "") + ")",
                    f"{c['wall_s']:.1f} s", f"<= {CHANGE_S} s, that layer only",
                    c["wall_s"] <= CHANGE_S and only))
    return out


def stage_lines(it: dict) -> list[str]:
    lines = [f"First run: {it['first']['wall_s']:.0f} s wall; stage times (s, summed over jobs): "
             f"{_stages(it['first']['stages'])}"]
    for c in it["changes"]:
        lines.append(f"Change {{{c['layer']}: {c['change']}}}: {c['wall_s']:.1f} s wall; "
                     f"{_stages(c['stages'])}")
    return lines
