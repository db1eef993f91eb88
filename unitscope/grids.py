"""The layer figure of Zeiler & Fergus Fig. 2: for each selected unit a ceil(√k)-wide block of
its top patches, all enlarged to one display size, thin gaps between patches and wider ones
between units, captioned with the layer, the unit and the true receptive-field size."""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .patches import read_index, read_patches

log = logging.getLogger("unitscope")

PICKS = ("top", "random", "first")
FIGURES = ("patches", "projections", "both")
PATCH_GAP = 2
UNIT_GAP = 14
TITLE_H = 28
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


def select_units(units: pd.DataFrame, how_many: int | list[int], pick: str = "top",
                 seed: int = 0) -> list[int]:
    """Which units to show: `how_many` chosen by `pick` (top by max activation, random with
    `seed`, first by unit id), or an explicit list of unit ids."""
    n = len(units)
    if isinstance(how_many, (list, tuple)):
        bad = [u for u in how_many if not 0 <= int(u) < n]
        if bad:
            raise ValueError(f"units {bad} do not exist: this layer has units 0..{n - 1}")
        return [int(u) for u in how_many]
    if how_many < 1:
        raise ValueError(f"units must be at least 1, got {how_many}")
    if how_many > n:
        raise ValueError(f"units: {how_many} asked for but this layer has only {n} channels")
    if pick == "top":
        order = units.sort_values(["max", "unit"], ascending=[False, True])["unit"]
        return [int(u) for u in order[:how_many]]
    if pick == "random":
        return sorted(int(u) for u in np.random.default_rng(seed).choice(n, how_many, replace=False))
    if pick == "first":
        return list(range(how_many))
    raise ValueError(f"pick {pick!r}; valid: {', '.join(PICKS)}")


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _enlarge(patch: np.ndarray, display_px: int):
    """A patch scaled so its longer side is display_px: nearest-neighbour when enlarging (the
    pixels stay visible), Lanczos when shrinking."""
    from PIL import Image

    h, w = patch.shape[:2]
    s = display_px / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return Image.fromarray(patch).resize(size, Image.NEAREST if s >= 1 else Image.LANCZOS)


def tile_grid(patches: list[np.ndarray], k: int, display_px: int):
    """A unit's k tiles in a ceil(√k)-wide grid, thin gaps between them; missing ones light gray."""
    from PIL import Image

    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    width = cols * display_px + (cols - 1) * PATCH_GAP
    height = rows * display_px + (rows - 1) * PATCH_GAP
    grid = Image.new("RGB", (width, height), BACKGROUND)
    empty = Image.new("RGB", (display_px, display_px), (235, 235, 235))
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        tile = _enlarge(patches[i], display_px) if i < len(patches) else empty
        grid.paste(tile, (c * (display_px + PATCH_GAP) + (display_px - tile.width) // 2,
                          r * (display_px + PATCH_GAP) + (display_px - tile.height) // 2))
    return grid


def unit_block(tile_sets: list[list[np.ndarray]], k: int, display_px: int, label: str):
    """One unit's block: its grids side by side (projections beside patches, as in the paper),
    with a caption underneath."""
    from PIL import Image, ImageDraw

    grids = [tile_grid(t, k, display_px) for t in tile_sets]
    caption_h = max(14, min(18, display_px // 4))
    width = sum(g.width for g in grids) + (len(grids) - 1) * 3 * PATCH_GAP
    height = grids[0].height + caption_h + 4
    block = Image.new("RGB", (width, height), BACKGROUND)
    x = 0
    for g in grids:
        block.paste(g, (x, 0))
        x += g.width + 3 * PATCH_GAP
    draw = ImageDraw.Draw(block)
    draw.text((0, height - caption_h - 2), label, fill=TEXT, font=_font(caption_h - 3))
    return block


def _tiles(path: str | os.PathLike, index: pd.DataFrame, unit: int) -> list[np.ndarray]:
    rows = index[index["unit"] == unit].sort_values("rank")
    return read_patches(path, rows.index)


def draw_grids(patches_path: str | os.PathLike, units_path: str | os.PathLike,
               figure_out: str | os.PathLike, unit_dir: str | os.PathLike,
               how_many: int | list[int] = 9, pick: str = "top", seed: int = 0,
               display_px: int = 64, k: int | None = None, title: str = "",
               projections_path: str | os.PathLike | None = None,
               figure: str = "patches") -> list[int]:
    """Write the layer figure and one PNG per selected unit (unit-UUUU.png); returns the units.
    `figure` = patches, projections, or both (each unit's projections beside its patches)."""
    from PIL import Image, ImageDraw
    import h5py

    units = pd.read_parquet(units_path)
    layer = str(units["layer"].iat[0])
    chosen = select_units(units, how_many, pick, seed)
    index = read_index(patches_path)
    with h5py.File(patches_path, "r") as f:
        rf_h, rf_w = (int(v) for v in f.attrs["rf_size"])
    k = k or int(index["rank"].max() + 1 if len(index) else 1)
    rf = f"RF {rf_h}x{rf_w} px"
    if figure not in FIGURES:
        raise ValueError(f"figure {figure!r}; valid: {', '.join(FIGURES)}")
    if figure != "patches" and projections_path is None:
        raise ValueError(f"figure: {figure} needs projections (projection is none)")
    proj_index = read_index(projections_path) if projections_path else None
    missing = sorted(set(chosen) - set(proj_index["unit"])) if proj_index is not None else []
    if figure != "patches" and missing:
        raise ValueError(f"no projections for units {missing}: the projections stage picked "
                         f"other units than this figure")
    blocks = []
    for u in chosen:
        sets = []
        if figure in ("projections", "both"):
            sets.append(_tiles(projections_path, proj_index, u))
        if figure in ("patches", "both"):
            sets.append(_tiles(patches_path, index, u))
        blocks.append(unit_block(sets, k, display_px, f"unit {u} | {rf}"))
    unit_dir = Path(unit_dir)
    with atomic_path(unit_dir) as tmp_dir:
        tmp_dir.mkdir()
        for u, b in zip(chosen, blocks):
            b.save(tmp_dir / f"unit-{u:04d}.png")
        if unit_dir.exists():  # replace an older set of unit figures
            import shutil
            shutil.rmtree(unit_dir)
    per_row = math.ceil(math.sqrt(len(blocks)))
    bw, bh = blocks[0].size
    n_rows = math.ceil(len(blocks) / per_row)
    fig = Image.new("RGB", (per_row * bw + (per_row + 1) * UNIT_GAP,
                            TITLE_H + n_rows * bh + (n_rows + 1) * UNIT_GAP), BACKGROUND)
    for i, b in enumerate(blocks):
        r, c = divmod(i, per_row)
        fig.paste(b, (UNIT_GAP + c * (bw + UNIT_GAP), TITLE_H + UNIT_GAP + r * (bh + UNIT_GAP)))
    shown = {"patches": "patches", "projections": "projections",
             "both": "projections (left) and patches (right)"}[figure]
    heading = title or f"{layer}: top {k} {shown} of {len(chosen)} units ({pick}) | {rf}"
    ImageDraw.Draw(fig).text((UNIT_GAP, 6), heading, fill=TEXT, font=_font(16))
    with atomic_path(figure_out) as tmp:
        fig.save(tmp, format="PNG")
    log.info("figure %s: units %s", figure_out, chosen)
    return chosen
