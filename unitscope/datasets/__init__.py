"""Dataset sources. Each yields candidate images (path, group, label, optional crop box); the
shared indexer decodes every candidate once and splits it into the manifest and the rejects.

Manifest columns (`manifest.parquet`): image_id (dense from 0), path, group, label (nullable),
width, height (of the image after EXIF orientation and crop), crop_left/top/right/bottom
(nullable: the region of `path` this image is, for datasets cut from larger photos).
Rejected columns (`rejected.parquet`): path, reason."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """One image a source offers: a file, where it came from, its label, and an optional crop box
    (left, top, right, bottom) in the file's (EXIF-oriented) pixels."""

    path: str
    group: str
    label: str | None = None
    crop: tuple[int, int, int, int] | None = None

