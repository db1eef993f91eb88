"""What a layer is invariant to (Zeiler & Fergus 2014, Fig. 5): images translated vertically,
scaled and rotated, each transformation applied to the original image — resized as the
preprocessing resizes it, before its centre crop — so that what enters the crop is real image,
not an invented border. Where the crop still reaches past the image (a large shift, a zoom
out, a rotation's corners) those pixels are the model's mean colour (a zero input) and the share
is recorded as `border`.

Table `invariance/L.parquet`, one row per image, transformation, amount and shown unit:
`image_id`, `of_unit` (the shown unit whose strongest image it is; -1 for images given by id),
`transform` (translation: pixels down, scale: factor, rotation: degrees anticlockwise),
`amount`, `border` (share of the input's pixels outside the original image), `distance`
(‖v(t) − v(0)‖ / ‖v(0)‖, v the vector of every unit's spatial maximum), `unit`, `activation`
(that unit's maximum), `top_class` and `p_top` (the untransformed image's most probable class and
its probability under the transformation; -1 and NaN where the model has no classifier).
Figure `invariance/L.png`: one column per transformation, rows: the distance per image, each
shown unit's activation on its own strongest image relative to the untransformed one, and
p(top class)."""
from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from .atomic import atomic_path

log = logging.getLogger("unitscope")

TRANSFORMS = ("translation", "scale", "rotation")
IDENTITY = {"translation": 0, "scale": 1, "rotation": 0}
UNITS = {"translation": "vertical shift (px, down)", "scale": "scale factor",
         "rotation": "rotation (degrees)"}


def transformed(image: np.ndarray, top: int, left: int, size: int, transform: str, amount: float,
                fill: tuple, resample: int = 3) -> tuple[np.ndarray, float]:
    """The `size`-px input cut from `image` (the resized original, whose centre crop starts at
    top, left) after the transformation, and the share of its pixels outside the original
    (filled with `fill`). The identity gives exactly the standard preprocessing."""
    from PIL import Image

    from .patches import crop_box

    h, w = image.shape[:2]
    fill_px = np.asarray(np.round(fill), np.uint8)
    if transform == "translation":
        y0 = top + int(round(amount))
        return _cut(image, (y0, left, y0 + size, left + size), fill_px)
    if transform == "scale":
        if amount == 1:
            return _cut(image, (top, left, top + size, left + size), fill_px)
        nh, nw = max(1, round(h * amount)), max(1, round(w * amount))
        scaled = np.asarray(Image.fromarray(image).resize((nw, nh), resample))
        y0, x0 = (nh - size) // 2, (nw - size) // 2
        return _cut(scaled, (y0, x0, y0 + size, x0 + size), fill_px)
    if transform == "rotation":
        if amount % 360 == 0:
            return _cut(image, (top, left, top + size, left + size), fill_px)
        centre = (left + size / 2, top + size / 2)  # about the crop's centre, in PIL's (x, y)
        rotated = np.asarray(Image.fromarray(image).rotate(amount, resample=Image.BICUBIC, center=centre,
                                                           fillcolor=tuple(int(v) for v in fill_px)))
        inside = np.asarray(Image.fromarray(np.full((h, w), 255, np.uint8)).rotate(
            amount, resample=Image.NEAREST, center=centre, fillcolor=0))
        patch, _ = crop_box(rotated, (top, left, top + size, left + size), fill=fill_px)
        mask, _ = crop_box(inside[..., None], (top, left, top + size, left + size), fill=0)
        return patch, float((mask[..., 0] == 0).mean())
    raise ValueError(f"transform {transform!r}: valid: {', '.join(TRANSFORMS)}")


def _cut(image: np.ndarray, box, fill_px) -> tuple[np.ndarray, float]:
    from .patches import crop_box

    patch, mask = crop_box(image, box, fill=fill_px)
    return patch, float(1 - mask.mean())


def sweep_image(runner, image: np.ndarray, top: int, left: int, size: int, sweeps: dict,
                resample: int = 3) -> pd.DataFrame:
    """One image under every transformation: per (transform, amount) its border share, the
    vector of the layer's per-unit maxima and the model's class probabilities (None without a
    classifier), in one batch."""
    import torch

    cases = [(t, a) for t in TRANSFORMS for a in sweeps.get(t, [])]
    inputs, borders = [], []
    for t, a in cases:
        x, border = transformed(image, top, left, size, t, a, runner.fill, resample)
        inputs.append(x)
        borders.append(border)
    maxima, probs = [], []
    step = max(1, runner.per_batch(size, size))
    for s in range(0, len(inputs), step):
        x = torch.cat([runner.normalised(im) for im in inputs[s:s + step]])
        maps, out = runner.run(x, full=True)
        maxima.append(maps.amax(dim=(2, 3)).double().numpy())
        if out is not None and out.dim() == 2 and out.shape[1] >= 2:
            probs.append(torch.softmax(out.double(), 1).numpy())
    return pd.DataFrame({"transform": [t for t, _ in cases], "amount": [float(a) for _, a in cases],
                         "border": borders, "v": list(np.concatenate(maxima)),
                         "p": list(np.concatenate(probs)) if probs else [None] * len(cases)})


def invariance_rows(sweep: pd.DataFrame, units: list[int], image_id: int, of_unit: int) -> pd.DataFrame:
    """The table rows of one image's sweep: the distances to the untransformed vector, the shown
    units' maxima, the untransformed top class's probability."""
    ident = sweep[[IDENTITY[t] == a for t, a in zip(sweep["transform"], sweep["amount"])]]
    v0 = ident["v"].iloc[0]
    norm = float(np.linalg.norm(v0))
    p0 = ident["p"].iloc[0]
    top_class = int(np.argmax(p0)) if p0 is not None else -1
    rows = []
    for r in sweep.itertuples():
        distance = float(np.linalg.norm(r.v - v0) / norm) if norm > 0 else float("nan")
        p_top = float(r.p[top_class]) if r.p is not None else float("nan")
        for u in units:
            rows.append((image_id, of_unit, r.transform, r.amount, r.border, distance, u,
                         float(r.v[u]), top_class, p_top))
    return pd.DataFrame(rows, columns=["image_id", "of_unit", "transform", "amount", "border",
                                       "distance", "unit", "activation", "top_class", "p_top"])


def draw_invariance(table: pd.DataFrame, out_path: str | os.PathLike, title: str) -> None:
    """The Fig. 5 arrangement with matplotlib: a column per transformation; rows: distance of the
    layer's vector per image, each shown unit's activation on its own strongest image (relative
    to the untransformed), p(top class) where there is a classifier. Hollow markers: the input
    reaches past the original image (border pixels in the mean colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classified = bool((table["top_class"] >= 0).any())
    rows = ["distance", "activation"] + (["p_top"] if classified else [])
    labels = {"distance": "distance to the untransformed\n(|v(t) - v(0)| / |v(0)|)",
              "activation": "unit's max on its own image\n(relative to untransformed)",
              "p_top": "p(untransformed top class)"}
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 2.9 * len(rows) + 0.9), squeeze=False)
    per_image = table.drop_duplicates(["image_id", "transform", "amount"])
    own = table[table["unit"] == table["of_unit"]]
    cmap = plt.get_cmap("tab10")
    for c, t in enumerate(TRANSFORMS):
        for r, what in enumerate(rows):
            ax = axes[r][c]
            if what == "activation":
                data, key = own[own["transform"] == t], "unit"
            else:
                data, key = per_image[per_image["transform"] == t], "image_id"
            for i, (who, g) in enumerate(data.groupby(key, sort=True)):
                g = g.sort_values("amount")
                y = g[what] if what != "activation" else g["activation"] / _at_identity(g, t)
                colour = cmap(i % 10)
                ax.plot(g["amount"], y, "-", color=colour, lw=1.2,
                        label=f"unit {who}" if key == "unit" else f"image {who}")
                inside = g["border"] <= 0
                ax.plot(g["amount"][inside], y[inside], "o", color=colour, ms=3.5)
                ax.plot(g["amount"][~inside], y[~inside], "o", mfc="white", color=colour, ms=3.5)
            if r == 0:
                ax.set_title(UNITS[t], fontsize=10)
            if c == 0:
                ax.set_ylabel(labels[what], fontsize=9)
            if r == len(rows) - 1:
                ax.set_xlabel(UNITS[t], fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
    for r in range(len(rows)):  # which line is which image (rows 0, 2) or unit (row 1)
        handles, names = axes[r][0].get_legend_handles_labels()
        if handles and r < 2:
            axes[r][2].legend(handles[:10], names[:10], fontsize=7, loc="best")
    fig.suptitle(f"{title}\nfilled markers: the input is all original image; hollow: part of it "
                 f"lies past the original (mean colour)", fontsize=10)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def _at_identity(g: pd.DataFrame, transform: str) -> float:
    base = g.loc[g["amount"] == IDENTITY[transform], "activation"]
    value = float(base.iloc[0]) if len(base) else float("nan")
    return value if value != 0 else float("nan")


def invariance_stage(top: str, shown: str, manifest: str, net, module: str, spec, layer: str,
                     settings: dict, table_out: str, figure_out: str, view=None,
                     title: str = "") -> pd.DataFrame:
    """The stage: the chosen images (each shown unit's strongest, or the ids given) under every
    transformation of `settings`; writes the table and the figure."""
    from .inputs import RESAMPLE, Preprocessing, load_resized
    from .occlusion import Runner
    from .progress import Progress
    from .shown import read_shown

    units = [int(u) for u in read_shown(shown)["units"]]
    t = pd.read_parquet(top)
    if settings.get("images", "top") == "top":
        first = t[(t["rank"] == 0) & t["unit"].isin(units)].set_index("unit")["image_id"]
        chosen = [(int(first[u]), u) for u in units if u in first.index]
    else:
        chosen = [(int(i), -1) for i in settings["images"]]
    rows = pd.read_parquet(manifest).set_index("image_id", drop=False)
    missing = [i for i, _ in chosen if i not in rows.index]
    if missing:
        raise ValueError(f"invariance.images: {missing} not in the manifest (ids 0..{len(rows) - 1})")
    prep = Preprocessing.of(spec)
    runner = Runner(net, module, tuple(spec.mean), tuple(spec.std), tuple(spec.mean), view)
    sweeps = {k: settings[k] for k in TRANSFORMS}
    progress = Progress(len(chosen), f"invariance {layer}", unit="images")
    parts = []
    for image_id, of_unit in chosen:
        row = next(rows.loc[[image_id]].itertuples(index=False))
        image, y0, x0 = load_resized(row, prep)
        sweep = sweep_image(runner, image, y0, x0, prep.input_size, sweeps, RESAMPLE[prep.resample])
        parts.append(invariance_rows(sweep, units, image_id, of_unit))
        progress.update(1)
    table = pd.concat(parts, ignore_index=True)
    with atomic_path(table_out) as tmp:
        table.to_parquet(tmp, index=False)
    draw_invariance(table, figure_out, title or f"layer {layer}: invariance (Zeiler & Fergus Fig. 5)")
    log.info("invariance %s: %d images x %d transformations", layer, len(chosen),
             sum(len(v) for v in sweeps.values()))
    return table
