"""The few lines a finished run prints: how many images were used and set aside, and where the
figures, the gallery and the report are."""
from __future__ import annotations

import os


def run_summary(run) -> str:
    """A short summary of what a run (plan.Run, or one model's Plan) has produced so far."""
    plans = list(run.plans.values()) if hasattr(run, "plans") else [run]
    lines = ["", "unitscope: done."]
    for i, plan in enumerate(plans):
        lines += _model_summary(plan, dataset=i == 0, named=len(plans) > 1)
    first = plans[0].layout
    for name, c in getattr(run, "compares", {}).items():
        page = first.compare_page(name)
        if os.path.exists(page):
            lines.append(f"  comparison {name} ({' -> '.join(c['models'])}): {os.path.abspath(page)}")
    lines.append("  report: snakemake --report report.zip")
    return "\n".join(lines)


def _model_summary(plan, dataset: bool, named: bool) -> list[str]:
    import pyarrow.parquet as pq

    L = plan.layout
    lines = [f" {L.model}:"] if named else []
    if dataset and os.path.exists(L.manifest):
        used = pq.ParquetFile(L.manifest).metadata.num_rows
        rejected = pq.ParquetFile(L.rejected).metadata.num_rows if os.path.exists(L.rejected) else 0
        lines.append(f"  images: {used:,} used" + (f", {rejected:,} set aside (reasons in "
                                                  f"{L.rejected})" if rejected else ""))
    figures = [L.grid(layer) for layer in plan.layer_names if os.path.exists(L.grid(layer))]
    if figures:
        lines.append(f"  figures: {os.path.dirname(figures[0])}/ ({', '.join(os.path.basename(f) for f in figures)})")
    occluded = [L.occlusion_grid(layer) for layer in plan.layer_names
                if plan.occluded and os.path.exists(L.occlusion_grid(layer))]
    if occluded:
        lines.append(f"  occlusion (Fig. 7): {', '.join(os.path.basename(f) for f in occluded)}")
    if plan.correspondence and os.path.exists(L.correspondence):
        lines.append(f"  part correspondence (Fig. 8): {L.correspondence}")
    if os.path.exists(L.filters_figure):
        lines.append(f"  first layer's filters (Fig. 6): {L.filters_figure}")
    inv = [L.invariance_figure(layer) for layer in plan.layer_names
           if os.path.exists(L.invariance_figure(layer))]
    if inv:
        lines.append(f"  invariance (Fig. 5): {', '.join(inv)}")
    if os.path.exists(os.path.join(L.gallery, "index.html")):
        lines.append(f"  gallery: {os.path.abspath(os.path.join(L.gallery, 'index.html'))}")
    return lines
