"""What a dataset is, so that two datasets never share one `results/D/`: the source kind, where
its images come from (folders and files by absolute real path, URLs as written) and the settings
that choose the subset. The dataset job writes it to `results/D/dataset.json`; the plan compares
it with the config before any job, so a second dataset under the same id (the default id is a
folder's base name: `a/photos` and `b/photos` are both `photos`) is refused rather than allowed
to overwrite the manifest that another model's activations were computed from."""
from __future__ import annotations

import json
import os
import re

SUBSET_KEYS = ("max_images", "per_class", "seed", "size", "split")
SOURCE_KEYS = ("path", "url", "mirror", "urls", "tar", "labels")


def where_from(value):
    """A local path as its absolute real path; a URL as written; lists element by element."""
    if isinstance(value, list):
        return [where_from(v) for v in value]
    if isinstance(value, str) and not re.match(r"^\w+://", value):
        return os.path.realpath(value)
    return value


def dataset_identity(cfg: dict) -> dict:
    """The identity of a `dataset:` block (after the schema filled in its defaults)."""
    from .sources import tar_shard_list

    out: dict = {"name": cfg["name"]}
    for key in SOURCE_KEYS:
        if cfg.get(key) is not None:
            value = tar_shard_list(cfg[key]) if key == "urls" else cfg[key]
            out[key] = where_from(value)
    for key in SUBSET_KEYS:
        if cfg.get(key) is not None:
            out[key] = cfg[key]
    return out


def describe(identity: dict) -> str:
    """A short phrase naming a dataset: its kind and where it comes from."""
    where = next((identity[k] for k in SOURCE_KEYS if k in identity), None)
    if isinstance(where, list):
        where = f"{where[0]} … ({len(where)} shards)" if len(where) > 1 else where[0]
    subset = ", ".join(f"{k} {identity[k]}" for k in SUBSET_KEYS if k in identity)
    return f"{identity['name']}{' ' + str(where) if where else ''}{f' ({subset})' if subset else ''}"


def write_record(identity: dict, path: str | os.PathLike) -> None:
    from ..atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(identity, f, indent=1, sort_keys=True)


def recorded_identity(path: str | os.PathLike) -> dict | None:
    """The identity a results folder records, None where it records none (or an unreadable one,
    which the dataset job then rewrites)."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and "name" in value else None
