"""The occlusion file and what needs no torch to read it: the squares' geometry, the settings, and
reading and writing `occlusion/L.h5` (the figures and the gallery read it without importing the
network code).

`occlusion/L.h5` (stamped `occlusion`): per example row `unit`, `rank`, `image_id`, `activation`
(stored in the top-k table), `unoccluded` (recomputed), `peaks` (positions at that maximum), `y`, `x` (its peak), `box` (its field),
`unit_map` (N×n×n float32: the unit's activation with the square at cell (i, j)); per occluded
image `class_image_id`, `class_prob` (M×m×m float32: probability of the image's unoccluded top
class), `class_label` (M×m×m int32: the most probable class), `top_class`, `top_prob` (unoccluded),
and `class_names` (the names of the classes that appear); attributes `size`, `stride`, `n`,
`class_size`, `class_stride`, `class_n`, `input_size`, `fill` (RGB, 0–255), `fill_mean` (whether
it is the model's mean), `method` (`local` or `whole`), `examples`, `classes` (whether there are
class maps), `layer`, `module`, `manifest_sha256`, `model_key`, `copies` (occluded copies run)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np
import pandas as pd

from .atomic import atomic_path
from .provenance import attr, open_checked, stamp


def default_stride(input_size: int) -> int:
    """8 px at a 224-px input, in proportion at other sizes."""
    return max(1, round(8 * input_size / 224))


@dataclass(frozen=True)
class Squares:
    """The occluder's positions: an n×n grid of `size`-px squares, square (i, j) centred on the
    cell [i·stride, (i+1)·stride) × [j·stride, (j+1)·stride) of an input_size-px input."""

    size: int
    stride: int
    input_size: int

    def __post_init__(self):
        if self.size < 1 or self.stride < 1:
            raise ValueError(f"occlusion square {self.size} px, stride {self.stride} px: both must be ≥ 1")

    @property
    def n(self) -> int:
        return -(-self.input_size // self.stride)

    def starts(self) -> np.ndarray:
        """First row (= column) of each square along an axis, unclipped (it may be negative)."""
        return np.arange(self.n) * self.stride + (self.stride - self.size) // 2

    def spans(self) -> np.ndarray:
        """(n, 2) [start, end) of each square along an axis, clipped to the input."""
        s = self.starts()
        return np.stack([np.clip(s, 0, self.input_size), np.clip(s + self.size, 0, self.input_size)], 1)

    def covers_every_pixel(self) -> bool:
        covered = np.zeros(self.input_size, bool)
        for a, b in self.spans():
            covered[a:b] = True
        return bool(covered.all())


def square_size(setting: int | str, input_size: int, rf: int) -> int:
    """`auto`: a quarter of the input, or the unit's receptive field where that is smaller."""
    if setting == "auto":
        return max(1, min(input_size // 4, rf))
    return int(setting)


def stride_for(setting: int | str, size: int, input_size: int) -> int:
    """`auto`: 8 px at 224 (in proportion); either way never more than the square, so that every
    pixel is covered."""
    stride = default_stride(input_size) if setting == "auto" else int(setting)
    return max(1, min(stride, size))


def fill_colour(fill, mean) -> tuple[tuple[float, float, float], bool]:
    """The grey (RGB, 0–255) and whether it is the model's mean: `mean` or an [r, g, b] list."""
    if fill == "mean":
        return tuple(float(v) for v in mean), True
    return tuple(float(v) for v in fill), False


@dataclass
class Settings:
    """The occlusion block of the config as plain values."""

    examples: int = 3
    units: int | str = "all"  # how many of the shown units, in display order
    size: int | str = "auto"
    stride: int | str = "auto"
    classes: bool = True
    fill: object = "mean"

    @classmethod
    def from_dict(cls, d: dict | None) -> "Settings":
        d = dict(d or {})
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def write_occlusion(result: dict, out_path: str | os.PathLike, settings: Settings, fill: tuple,
                    fill_mean: bool, layer: str, module: str, manifest_sha: str = "",
                    model_key: str = "", copies: int = 0) -> None:
    """Write `occlude_examples`' result as occlusion/L.h5 (the format of the module docstring)."""
    from .classes import class_name

    ex = result["examples"]
    sq, csq = result["squares"], result["class_squares"]
    rows = result["class_rows"]
    n_classes = result["n_classes"]
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        for name in ("unit", "rank", "image_id", "y", "x"):
            f.create_dataset(name, data=ex[name].to_numpy(np.int64))
        f.create_dataset("activation", data=ex["activation"].to_numpy(np.float32))
        f.create_dataset("unoccluded", data=result["unoccluded"].astype(np.float32))
        f.create_dataset("peaks", data=result["peaks"])
        f.create_dataset("box", data=ex[["y0", "x0", "y1", "x1"]].to_numpy(np.int64).reshape(-1, 4))
        f.create_dataset("unit_map", data=result["maps"].astype(np.float32), compression="gzip")
        m = csq.n
        f.create_dataset("class_image_id", data=np.array([r[0] for r in rows], np.int64))
        f.create_dataset("class_prob", data=np.array([r[1] for r in rows], np.float32).reshape(-1, m, m),
                         compression="gzip")
        labels = np.array([r[2] for r in rows], np.int32).reshape(-1, m, m)
        f.create_dataset("class_label", data=labels, compression="gzip")
        f.create_dataset("top_class", data=np.array([r[3] for r in rows], np.int64))
        f.create_dataset("top_prob", data=np.array([r[4] for r in rows], np.float32))
        seen = sorted(set(np.unique(labels).tolist()) | {r[3] for r in rows})
        f.create_dataset("class_index", data=np.array(seen, np.int64))
        f.create_dataset("class_names", data=np.array([class_name(c, n_classes).encode() for c in seen],
                                                      dtype=h5py.string_dtype()))
        stamp(f, "occlusion", layer=layer, module=module, size=sq.size, stride=sq.stride, n=sq.n,
              class_size=csq.size, class_stride=csq.stride, class_n=csq.n,
              input_size=sq.input_size, fill=list(fill), fill_mean=bool(fill_mean),
              method=result["method"], examples=int(settings.examples), classes=bool(rows),
              n_classes=int(n_classes), manifest_sha256=manifest_sha, model_key=model_key,
              copies=int(copies))


@dataclass
class OcclusionFile:
    """An occlusion/L.h5 file read back: the example table (unit, rank, image_id, activation,
    unoccluded, y, x, y0…x1), the unit maps, the class maps by image id, class names, attributes."""

    examples: pd.DataFrame
    maps: np.ndarray
    class_prob: dict
    class_label: dict
    top_class: dict
    top_prob: dict
    names: dict
    attrs: dict

    def class_maps_of(self, image_id: int):
        """(probability map, label map, top class, top probability) or None."""
        if image_id not in self.class_prob:
            return None
        return (self.class_prob[image_id], self.class_label[image_id], self.top_class[image_id],
                self.top_prob[image_id])


def read_occlusion(path: str | os.PathLike) -> OcclusionFile:
    """Read an occlusion file (checked to be one)."""
    with open_checked(path, "occlusion") as f:
        ex = pd.DataFrame({name: f[name][:] for name in
                           ("unit", "rank", "image_id", "activation", "unoccluded", "peaks", "y", "x")})
        box = f["box"][:]
        for i, name in enumerate(("y0", "x0", "y1", "x1")):
            ex[name] = box[:, i] if len(box) else np.zeros(0, np.int64)
        maps = f["unit_map"][:]
        ids = [int(i) for i in f["class_image_id"][:]]
        prob, label = f["class_prob"][:], f["class_label"][:]
        top, top_p = f["top_class"][:], f["top_prob"][:]
        names = {int(c): (n.decode() if isinstance(n, bytes) else str(n))
                 for c, n in zip(f["class_index"][:], f["class_names"][:])}
        attrs = {k: attr(f, k) for k in f.attrs}
    return OcclusionFile(ex, maps, dict(zip(ids, prob)), dict(zip(ids, label)),
                         {i: int(t) for i, t in zip(ids, top)}, {i: float(p) for i, p in zip(ids, top_p)},
                         names, attrs)
