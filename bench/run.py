"""The benchmark: every figure is a ratio against a baseline measured in the same run on the same
machine (these machines are noisy), printed as a table and written to bench/results/latest.json.
One module per section, sharing `harness.py`:

    python bench/run.py                    # every section, about 20 minutes on 2 cores
    python bench/run.py --only iterate     # some sections (merged into the last results)
    python bench/run.py --quick            # smaller sizes, for trying the script itself
    python bench/run.py --table [bench/results/latest.json]   # reprint an earlier run's table

Sections: scale (scale.py), inference (inference.py), topk (tables.py), planning and listing
(planning.py), default (default_run.py), iterate (iterate.py), occlusion (occlusion.py), series
(series.py), cloud (cloud.py: needs make cloud-plugins); each module's docstring says what it measures and against what."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cloud  # noqa: E402
import default_run  # noqa: E402
import inference  # noqa: E402
import iterate  # noqa: E402
import occlusion  # noqa: E402
import planning  # noqa: E402
import scale  # noqa: E402
import series  # noqa: E402
import tables  # noqa: E402
from harness import DEFAULT_OUT  # noqa: E402

ROWS = {"scale": scale.rows, "inference": inference.rows, "topk": tables.rows,
        "planning": planning.rows, "listing": planning.listing_rows, "default": default_run.rows,
        "iterate": iterate.rows, "occlusion": occlusion.rows, "series": series.rows,
        "cloud": cloud.rows}


def sections(quick: bool) -> dict:
    q = quick
    return {"planning": lambda tmp: planning.bench_planning(tmp, 200 if q else 1400),
            "listing": lambda tmp: planning.bench_listing(tmp, 10_000 if q else 100_000),
            "topk": lambda tmp: tables.bench_topk(tmp, 2000 if q else 20000, 20000 if q else 200000, 256),
            "inference": lambda tmp: inference.bench_inference(tmp, 32 if q else 192),
            "scale": lambda tmp: scale.bench_scale(tmp, 200 if q else 5000, 800 if q else 20000),
            "default": lambda tmp: default_run.bench_default(tmp, 40 if q else None),
            "iterate": lambda tmp: iterate.bench_iterate(tmp, 40 if q else None),
            "occlusion": lambda tmp: occlusion.bench_occlusion(tmp, 40 if q else None),
            "series": lambda tmp: series.bench_series(tmp, 40 if q else None),
            "cloud": lambda tmp: cloud.bench_cloud(tmp, 12 if q else None)}


def table(res: dict) -> str:
    rows = [row for name, fn in ROWS.items() if name in res for row in fn(res[name])]
    lines = ["| figure | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {'yes' if d else 'NO'} |" for a, b, c, d in rows]
    if "default" in res:
        lines += ["", default_run.stage_line(res["default"])]
    if "iterate" in res:
        lines += [""] + iterate.stage_lines(res["iterate"])
    if "series" in res:
        lines += [""] + series.stage_lines(res["series"])
    if "cloud" in res:
        lines += [""] + cloud.stage_lines(res["cloud"])
    return "\n".join(lines)


def print_table(path: str) -> int:
    """Print the table of an earlier run's JSON (or say there is none)."""
    p = Path(path)
    if not p.exists():
        print(f"no benchmark results at {p}: run python bench/run.py first", file=sys.stderr)
        return 1
    print(table(json.loads(p.read_text())))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (checks the script, not the targets)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--table", nargs="?", const=str(DEFAULT_OUT), metavar="JSON",
                   help="only print the table of an earlier run")
    p.add_argument("--only", nargs="+", choices=list(ROWS),
                   help="run only these sections (merged into an existing --out file)")
    args = p.parse_args()
    if args.table:
        return print_table(args.table)
    out = Path(args.out)
    res = json.loads(out.read_text()) if args.only and out.exists() else {}
    res |= {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "platform": platform.platform()}, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    with tempfile.TemporaryDirectory() as d:
        for name, fn in sections(args.quick).items():
            if args.only and name not in args.only:
                continue
            t = time.perf_counter()
            (Path(d) / name).mkdir()
            res[name] = fn(Path(d) / name)
            print(f"{name}: done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(table(res))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
