"""The activation file of one layer and shard (`activations/L/shard-XXX.h5`), rows = images:
`image_id` (N,), `max` (N×C float32, each unit's spatial maximum), `argmax_y`, `argmax_x` (N×C
uint16, the first maximum in row-major order), `mean` (N×C float32, the spatial mean: orders
images tied at the maximum), `min`, `argmin_y`, `argmin_x` (the spatial minimum and its first
position: the most inhibited examples); attributes as provenance.py describes. No torch here, so
that the stages that only read these files stay light."""
from __future__ import annotations

import os

import h5py
import numpy as np

from .atomic import atomic_path
from .provenance import Digest, open_checked, stamp

# dataset name -> dtype, in the order rows are written and digested
DATASETS = {"max": np.float32, "argmax_y": np.uint16, "argmax_x": np.uint16, "mean": np.float32,
            "min": np.float32, "argmin_y": np.uint16, "argmin_x": np.uint16}
BYTES_PER_UNIT = sum(np.dtype(t).itemsize for t in DATASETS.values())


def write_layer_file(path: str | os.PathLike, layer: str, image_ids: np.ndarray,
                     arrays: dict[str, np.ndarray], **meta) -> None:
    """One activation file written at once from in-memory arrays (N×C each; any of the datasets
    missing is derived: argmax/argmin 0, mean = max, min = max), stamped like the stage's."""
    ids = np.asarray(image_ids, np.int64)
    full = dict(arrays)
    full.setdefault("mean", full["max"])
    full.setdefault("min", full["max"])
    for name in ("argmax_y", "argmax_x", "argmin_y", "argmin_x"):
        full.setdefault(name, np.zeros(full["max"].shape, np.int64))
    digest = Digest()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, dt in DATASETS.items():
            values = np.asarray(full[name]).astype(dt).reshape(len(ids), np.shape(full["max"])[-1])
            f.create_dataset(name, data=values)
            digest.update(name, values)
        f.create_dataset("image_id", data=ids)
        digest.update("image_id", ids)
        stamp(f, "activations", layer=layer, n_images=len(ids),
              first_id=int(ids[0]) if len(ids) else -1, content_sha=digest.hexdigest(),
              **{"module": layer, "shard": 0, "shards": 1, "manifest_sha256": "",
                 "model_key": "", "precision": "fp32", "source": "test", **meta})


def read_layer(paths: list[str | os.PathLike]) -> dict[str, np.ndarray]:
    """All rows of a layer's activation files, concatenated (for tests and small data)."""
    parts: dict[str, list] = {k: [] for k in ("image_id", *DATASETS)}
    for p in paths:
        with open_checked(p, "activations") as f:
            if len(f["image_id"]) == 0:
                continue
            for k in parts:
                parts[k].append(f[k][:])
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
