"""A comparison's page (`compare/<name>/index.html`): what the comparison is, each model with a
link to its gallery, and per layer the figure and, per step, how much the units changed (mean
Jaccard overlap of the top-k images with the previous model's, units whose strongest image
changed)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from .atomic import atomic_path


def step_summary(table: pd.DataFrame) -> list[dict]:
    """Per model of a comparison table: its step, mean Jaccard with the previous model's top-k
    sets (None at step 0) and the number of units whose strongest image changed."""
    first = table[table["rank"] == 0]
    rows = []
    for (step, model), g in first.groupby(["step", "model"], sort=True):
        rows.append({"step": int(step), "model": model, "units": len(g),
                     "jaccard": None if step == 0 else f"{g['jaccard'].mean():.2f}",
                     "changed": None if step == 0 else int(g["top1_changed"].sum())})
    return rows


def write_compare_page(name: str, models: list[str], layers: list[str], tables: list[str],
                       figures: list[str], index: str | os.PathLike, style: str | os.PathLike) -> None:
    """The page, beside the figures it shows (linked by file name), and its style sheet."""
    from .gallery import TEMPLATES, _render

    folder = Path(index).parent
    sections = []
    for layer, table, figure in zip(layers, tables, figures, strict=True):
        if Path(figure).parent != folder:
            raise ValueError(f"the comparison page shows figures beside it, not {figure}")
        sections.append({"layer": layer, "figure": Path(figure).name,
                         "steps": step_summary(pd.read_parquet(table))})
    data = folder.parent.parent  # results/D
    galleries = {m: os.path.relpath(data / m / "gallery" / "index.html", folder) for m in models}
    with atomic_path(style) as tmp:
        shutil.copyfile(TEMPLATES / "style.css", tmp)
    with atomic_path(index) as tmp:
        _render(tmp, "compare.html", title=f"{name}: how units change across models", depth=0,
                name=name, models=models, galleries=galleries, sections=sections)
