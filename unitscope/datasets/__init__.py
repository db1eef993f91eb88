"""Dataset sources. Each yields candidate images (path, group, label, optional crop box); the
shared indexer decodes every candidate once and splits it into the manifest and the rejects.

Manifest columns (`manifest.parquet`): image_id (dense from 0), path, group, label (nullable),
width, height (of the image after EXIF orientation and crop), crop_left/top/right/bottom
(nullable: the region of `path` this image is, for datasets cut from larger photos), member,
member_offset, member_size, shard (nullable: for an image inside a tar shard, its name there,
where its bytes are, and the shard's index, which is also its inference shard), tar_sha256,
tar_size, tar_mtime_ns, tar_ctime_ns (nullable: what that tar was when indexed, checked by every
job that reads its members; datasets/tars.py). Rejected columns (`rejected.parquet`): path,
reason."""
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
    member: str | None = None   # the image's name inside the tar at `path` (tar shards)
    offset: int | None = None   # where its bytes start in that tar
    size: int | None = None     # how many bytes
    shard: int | None = None    # the tar shard it comes from (its inference shard)
    stamp: tuple[str, int, int, int] | None = None  # that tar's sha256, size, mtime_ns, ctime_ns
    reject: str | None = None   # why it cannot be used, known before decoding (a link member)

    def open(self):
        """A binary file object of the image's bytes (the file, or its bytes inside a tar)."""
        if self.offset is None:
            return open(self.path, "rb")
        import io

        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return io.BytesIO(f.read(self.size))

