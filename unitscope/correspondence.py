"""Part correspondence (Zeiler & Fergus 2014, Fig. 8 and its table): does a layer respond to the
same part of different objects in the same way? Each named part (a dog's left eye, say) is
occluded in each of your images, and also — the control — a random box of the same size. For
image i and layer l, ε_i = features(original) − features(occluded), the per-unit spatial maxima of
the layer (as stored everywhere). The paper's measure is

    Δ_l = Σ_{i≠j} H(sign ε_i, sign ε_j),

H the Hamming distance; here normalised by the number of units and of ordered pairs, so that
Δ is the mean share of units whose change differs in sign between two images (0: every unit moves
the same way in every image; lower than the random control: the layer ties that part together).

Input: a CSV with columns image, part, x0, y0, x1, y1 — an image file (relative to the CSV's
folder, or absolute), a part name and its box in that file's pixels (after EXIF orientation);
each part needs at least two images. The boxes are carried through the model's preprocessing.

`correspondence.parquet`, one row per part and layer, then per part and layer its control:
part, layer, control (False: the part; True: random boxes of the part's size), delta, std (a
part: the spread over image pairs; a control: the spread of Δ over the `draws` random draws),
images, pairs, draws."""
from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from .atomic import atomic_path

log = logging.getLogger("unitscope")
PART_COLUMNS = ["image", "part", "x0", "y0", "x1", "y1"]
COLUMNS = ["part", "layer", "control", "delta", "std", "images", "pairs", "draws"]


def read_parts(csv_path: str | os.PathLike) -> pd.DataFrame:
    """The parts CSV, checked: its columns, numeric boxes with x1 > x0 and y1 > y0 inside the
    image, each image a file, each (image, part) once, each part in at least two images. Adds
    `path` (the image's absolute path), `width` and `height` (its size after EXIF orientation)."""
    from PIL import Image

    csv_path = str(csv_path)
    if not os.path.isfile(csv_path):
        raise ValueError(f"no file {csv_path!r}")
    try:
        t = pd.read_csv(csv_path, dtype={"image": str, "part": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{csv_path}: not a CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in PART_COLUMNS if c not in t.columns]
    if missing:
        raise ValueError(f"{csv_path} lacks the columns {', '.join(missing)} (it needs "
                         f"{', '.join(PART_COLUMNS)})")
    if t.empty:
        raise ValueError(f"{csv_path} has no rows")
    for c in ("x0", "y0", "x1", "y1"):
        bad = pd.to_numeric(t[c], errors="coerce").isna()
        if bad.any():
            raise ValueError(f"{csv_path} row {int(np.argmax(bad.to_numpy())) + 2}: {c} "
                             f"{t[c][bad].iloc[0]!r} is not a number")
        t[c] = pd.to_numeric(t[c]).astype(float)
    base = os.path.dirname(os.path.abspath(csv_path))
    t["path"] = [os.path.normpath(os.path.join(base, str(p))) for p in t["image"]]
    dup = t.duplicated(["image", "part"])
    if dup.any():
        r = t[dup].iloc[0]
        raise ValueError(f"{csv_path}: part {r.part!r} of {r.image!r} is listed twice")
    sizes: dict[str, tuple[int, int]] = {}
    for i, r in enumerate(t.itertuples(), start=2):
        if not os.path.isfile(r.path):
            raise ValueError(f"{csv_path} row {i}: no image file {r.image!r}")
        if r.path not in sizes:
            try:
                with Image.open(r.path) as im:  # the size after EXIF orientation, nothing decoded
                    w, h = im.size
                    sizes[r.path] = (h, w) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)
            except OSError as e:
                raise ValueError(f"{csv_path} row {i}: {r.image!r} is not an image ({e})") from None
        w, h = sizes[r.path]
        if not (0 <= r.x0 < r.x1 <= w and 0 <= r.y0 < r.y1 <= h):
            raise ValueError(f"{csv_path} row {i}: box x {r.x0:g}..{r.x1:g}, y {r.y0:g}..{r.y1:g} "
                             f"is not inside the {w}×{h} image {r.image!r} (need 0 ≤ x0 < x1 ≤ "
                             f"width, 0 ≤ y0 < y1 ≤ height)")
    t["width"] = [sizes[p][0] for p in t["path"]]
    t["height"] = [sizes[p][1] for p in t["path"]]
    counts = t.groupby("part")["image"].nunique()
    few = counts[counts < 2]
    if len(few):
        raise ValueError(f"{csv_path}: part {few.index[0]!r} is in {int(few.iloc[0])} image; "
                         f"each part needs at least 2 (Δ compares pairs of images)")
    return t


def input_box(box: tuple[float, float, float, float], file_size: tuple[int, int], resize_size: int,
              input_size: int) -> tuple[int, int, int, int]:
    """A box (x0, y0, x1, y1) in the file's pixels as (y0, x0, y1, x1) in network-input pixels
    (the resize and centre crop of geometry.resized_crop), clipped to the input; every input
    pixel the box overlaps is included."""
    from .geometry import resized_crop

    w, h = file_size
    nw, nh, left, top = resized_crop(w, h, resize_size, input_size)
    sx, sy = nw / w, nh / h
    x0, y0, x1, y1 = box
    ys = (int(np.floor(y0 * sy)) - top, int(np.ceil(y1 * sy)) - top)
    xs = (int(np.floor(x0 * sx)) - left, int(np.ceil(x1 * sx)) - left)
    out = (max(ys[0], 0), max(xs[0], 0), min(ys[1], input_size), min(xs[1], input_size))
    if out[2] <= out[0] or out[3] <= out[1]:
        raise ValueError(f"box {box} lies outside the centre crop the network sees")
    return out


def hamming_delta(eps: np.ndarray) -> tuple[float, float, int]:
    """(Δ, its spread over pairs, ordered pairs) of an images × units matrix of ε: the mean over
    ordered pairs i ≠ j of the share of units where sign ε_i ≠ sign ε_j."""
    s = np.sign(eps)
    n = len(s)
    if n < 2:
        raise ValueError("Δ needs at least 2 images")
    d = (s[:, None, :] != s[None, :, :]).mean(2)
    pairs = d[~np.eye(n, dtype=bool)]
    return float(pairs.mean()), float(pairs.std()), len(pairs)


def layer_maxima(model: torch.nn.Module, modules: dict[str, str], x: torch.Tensor,
                 views: dict | None = None, batch: int = 8) -> dict[str, np.ndarray]:
    """Each layer's per-unit spatial maxima (N × C) for the inputs x (N×3×H×W, normalised)."""
    from .hooks import layer_outputs

    out: dict[str, list] = {layer: [] for layer in modules}
    with torch.inference_mode():
        for s in range(0, len(x), batch):
            maps = layer_outputs(model, modules, x[s:s + batch].contiguous(memory_format=torch.channels_last),
                                 views)
            for layer, m in maps.items():
                out[layer].append(m.double().flatten(2).max(2).values.numpy())
    return {layer: np.concatenate(v) for layer, v in out.items()}


def part_correspondence(images: dict[str, np.ndarray], parts: pd.DataFrame, model, modules: dict[str, str],
                        mean, std, fill, draws: int = 10, seed: int = 0, views: dict | None = None,
                        dtype=torch.float32) -> pd.DataFrame:
    """The correspondence table. `images` maps an image key to its H×W×3 uint8 network input;
    `parts` has columns image (a key), part, and the box in input pixels (iy0, ix0, iy1, ix1)."""
    mean_t = torch.tensor(mean, dtype=dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=dtype).view(1, 3, 1, 1)
    grey = ((torch.tensor(fill, dtype=dtype).view(1, 3, 1, 1)) - mean_t) / std_t
    keys = sorted(images)
    base = torch.stack([torch.from_numpy(np.ascontiguousarray(images[k])).permute(2, 0, 1) for k in keys]).to(dtype)
    base = (base - mean_t) / std_t
    where = {k: i for i, k in enumerate(keys)}
    size = base.shape[-1]
    original = layer_maxima(model, modules, base, views)
    rng = np.random.default_rng(seed)
    rows = []

    def occluded(boxes: list[tuple[str, tuple[int, int, int, int]]]) -> dict[str, np.ndarray]:
        x = torch.stack([base[where[k]] for k, _ in boxes]).clone()
        for i, (_, (y0, x0, y1, x1)) in enumerate(boxes):
            x[i, :, y0:y1, x0:x1] = grey[0]
        return layer_maxima(model, modules, x, views)

    for part, g in parts.groupby("part", sort=True):
        boxes = [(r.image, (int(r.iy0), int(r.ix0), int(r.iy1), int(r.ix1))) for r in g.itertuples()]
        idx = [where[k] for k, _ in boxes]
        got = occluded(boxes)
        controls = []
        for _ in range(draws):
            random_boxes = []
            for k, (y0, x0, y1, x1) in boxes:
                h, w = y1 - y0, x1 - x0
                ry, rx = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
                random_boxes.append((k, (ry, rx, ry + h, rx + w)))
            controls.append(occluded(random_boxes))
        for layer in modules:
            delta, spread, pairs = hamming_delta(original[layer][idx] - got[layer])
            rows.append((part, layer, False, delta, spread, len(boxes), pairs, 0))
            deltas = [hamming_delta(original[layer][idx] - c[layer])[0] for c in controls]
            rows.append((part, layer, True, float(np.mean(deltas)), float(np.std(deltas)), len(boxes),
                         pairs, draws))
        log.info("correspondence: part %s: %s", part, ", ".join(
            f"{layer} {r[3]:.3f} (random {r2[3]:.3f})" for layer, r, r2 in
            zip(modules, rows[-2 * len(modules)::2], rows[-2 * len(modules) + 1::2])))
    return pd.DataFrame(rows, columns=COLUMNS)


def correspondence_stage(images_csv: str, model_cfg: dict, layers: list[str], out: str,
                         draws: int = 10, seed: int = 0, fill="mean") -> pd.DataFrame:
    """The stage: read the parts CSV, load each image as the network sees it, write the table."""
    from .inputs import Preprocessing, load_image
    from .models import ModelConfig, build_model, resolve_layers
    from .occlusion_file import fill_colour

    cfg = ModelConfig.from_dict(model_cfg)
    spec = cfg.spec()
    net = build_model(spec, cfg.weights, cfg.seed).eval().to(memory_format=torch.channels_last)
    modules = resolve_layers(spec, list(layers), model=net)
    views = {k: v for k, v in cfg.layer_views().items() if k in modules}
    prep = Preprocessing.of(spec)
    parts = read_parts(images_csv)
    images, boxes = {}, []
    for r in parts.itertuples():
        if r.image not in images:
            images[r.image] = load_image(SimpleNamespace(path=r.path, member=None, member_offset=None,
                                                         crop_left=None), prep)
        try:
            boxes.append(input_box((r.x0, r.y0, r.x1, r.y1), (r.width, r.height), prep.resize_size,
                                   prep.input_size))
        except ValueError as e:
            raise ValueError(f"{images_csv}: part {r.part!r} of {r.image!r}: {e}") from None
    parts = parts.assign(**{name: [b[i] for b in boxes] for i, name in enumerate(("iy0", "ix0", "iy1", "ix1"))})
    colour, _ = fill_colour(fill, spec.mean)
    table = part_correspondence(images, parts, net, modules, spec.mean, spec.std, colour, draws,
                                seed, views or None)
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    return table
