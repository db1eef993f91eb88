"""Archive extraction that never writes outside its target folder: tar members go through the
standard library's `data` filter (no absolute paths, no `..`, no links pointing out, no device
files), zip members are checked the same way, every member is checked before anything is written,
and archives that would expand absurdly are refused. Extraction goes to a temporary folder that
is renamed into place only when complete, and records what it was made from.

`check_archive` reads an archive to its end (every gzip/bzip2/xz block and CRC, every zip
member's CRC) before anything trusts it: a download cut short without a Content-Length header
fails there instead of being kept."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path

log = logging.getLogger("unitscope")

MAX_BYTES = 200 * 2**30     # refuse archives that expand beyond 200 GiB ...
MAX_RATIO = 200             # ... or to more than 200× their own size
MAX_MEMBERS = 5_000_000


class UnsafeArchive(ValueError):
    """The archive would write outside its folder, or expand absurdly."""


class DamagedArchive(ValueError):
    """The archive is truncated or corrupt."""


READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError)


def check_archive(path: str | os.PathLike) -> None:
    """Read a .tar/.tar.gz/.tgz/.zip to its end; DamagedArchive if it is cut short or corrupt."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
            if bad is not None:
                raise DamagedArchive(f"{path.name}: member {bad!r} is corrupt")
            return
        with tarfile.open(path) as t:
            for member in t:
                if member.isfile():
                    f = t.extractfile(member)
                    while f.read(1 << 20):
                        pass
    except DamagedArchive:
        raise
    except READ_ERRORS as e:
        _reraise_io(e)
        raise DamagedArchive(f"{path.name} is truncated or damaged ({type(e).__name__}: {e})") from None


def _reraise_io(e: Exception) -> None:
    """Real I/O errors (a full disk, a permission) are not a damaged archive: raise them as they are."""
    if isinstance(e, OSError) and e.errno is not None:
        raise e


def extract_once(archive: str | os.PathLike, target: str | os.PathLike, source: dict) -> Path:
    """`archive` extracted into `target`, reused while its record (`.unitscope-source.json`,
    written last) says it was made from the same `source` (URL, checksum, file identity);
    extracted anew otherwise."""
    target = Path(target)
    record = target / ".unitscope-source.json"
    if target.is_dir() and record.exists():
        try:
            if json.loads(record.read_text()) == source:
                return target
        except ValueError:
            pass
    if target.exists():
        log.warning("%s was made from another archive; extracting anew", target)
        shutil.rmtree(target)
    safe_extract(archive, target)
    record.write_text(json.dumps(source, sort_keys=True))
    return target


def _check_total(archive: Path, total: int, members: int, max_bytes: int, max_ratio: int) -> None:
    size = max(archive.stat().st_size, 1)
    if members > MAX_MEMBERS or total > max_bytes or total > max_ratio * size:
        raise UnsafeArchive(f"{archive} would expand to {total:,} bytes in {members:,} members "
                            f"(limits: {max_bytes:,} bytes, {max_ratio}× its size)")


def _inside(root: Path, name: str) -> bool:
    target = (root / name).resolve()
    return target == root or root in target.parents


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike,
                 max_bytes: int = MAX_BYTES, max_ratio: int = MAX_RATIO) -> Path:
    """Extract a .tar/.tar.gz/.tgz/.zip into `target` (which must not exist yet)."""
    archive, target = Path(archive), Path(target)
    tmp = target.with_name(f".{target.name}.extracting")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    root = tmp.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                infos = z.infolist()
                for info in infos:
                    name = info.filename
                    if name.startswith(("/", "\\")) or os.path.isabs(name) or ":" in name \
                            or not _inside(root, name):
                        raise UnsafeArchive(f"{archive}: member {name!r} would be written "
                                            f"outside {target}")
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise UnsafeArchive(f"{archive}: member {name!r} is a symbolic link")
                _check_total(archive, sum(i.file_size for i in infos), len(infos), max_bytes,
                             max_ratio)
                z.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                members = t.getmembers()
                for m in members:
                    if os.path.isabs(m.name) or m.name.startswith(("/", "\\")):
                        raise UnsafeArchive(f"{archive}: member {m.name!r} refused: absolute path")
                    try:
                        tarfile.data_filter(m, str(root))
                    except tarfile.FilterError as e:
                        raise UnsafeArchive(f"{archive}: member {m.name!r} refused: {e}") from None
                _check_total(archive, sum(m.size for m in members), len(members), max_bytes,
                             max_ratio)
                t.extractall(tmp, filter="data")
        else:
            raise UnsafeArchive(f"{archive} is neither a tar nor a zip archive")
        os.replace(tmp, target)
    except READ_ERRORS as e:
        _reraise_io(e)
        raise DamagedArchive(f"{archive} is truncated or damaged ({type(e).__name__}: {e})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("extracted %s -> %s", archive, target)
    return target
