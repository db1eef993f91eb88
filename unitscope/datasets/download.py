"""Downloads that a rerun can trust: progress, retries with backoff, resume of a partial file with
an HTTP Range request where the server allows it, checksum verified before the file is moved into
place. A failure names the URL and what happened and leaves no file that a rerun would take for
complete.

Every URL has its own folder, `resources/downloads/<hash of the URL>/`, holding the file, its
partial `.part` (resumed only for that URL) and `<file>.sha256`, the digest recorded when the file
was complete: a cached file is used again only while it still has that digest (and the expected
checksum, where one is given). `file://` URLs are read in place; a missing one fails at once."""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..progress import Progress

log = logging.getLogger("unitscope")
CHUNK = 1 << 20
SCHEMES = ("http", "https", "file")


class DownloadError(RuntimeError):
    """A download failed for good; the message names the URL."""


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str | os.PathLike, md5: str | None = None, sha256: str | None = None) -> str | None:
    """None if the file matches the given checksums, else what does not match."""
    for algorithm, want in (("sha256", sha256), ("md5", md5)):
        if want:
            got = file_digest(path, algorithm)
            if got.lower() != want.lower():
                return f"{algorithm} mismatch: expected {want}, got {got}"
    return None


def url_key(url: str) -> str:
    """The cache folder name of a URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def cached_path(url: str, resources: str | os.PathLike) -> Path:
    """Where `fetch` keeps the file of `url`."""
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    return Path(resources) / "downloads" / url_key(url) / name


def fetch(url: str, resources: str | os.PathLike, md5: str | None = None,
          sha256: str | None = None, check=None, **kw) -> Path:
    """The local file of `url`: a file:// URL in place, anything else downloaded once into its
    own cache folder under `resources` (see the module docstring). `check(path)` may raise
    ValueError to refuse a complete download (a damaged archive); the file is then removed."""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in SCHEMES:
        raise DownloadError(f"{url}: unsupported scheme {scheme!r}; valid: http, https, file")
    if scheme == "file":
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
        if not path.is_file():
            raise DownloadError(f"{url}: no such file")
        problem = verify(path, md5, sha256)
        if problem:
            raise DownloadError(f"{url}: {problem}")
        if check is not None:
            check(path)
        return path
    return download(url, cached_path(url, resources), md5, sha256, check=check, **kw)


def download(url: str, dest: str | os.PathLike, md5: str | None = None, sha256: str | None = None,
             retries: int = 4, backoff_s: float = 1.0, timeout_s: float = 30.0, check=None) -> Path:
    """Fetch `url` to `dest` (skipped if `dest` is complete: it has the digest recorded when it
    was written, and the given checksums)."""
    dest = Path(dest)
    record = dest.with_name(dest.name + ".sha256")
    if dest.exists():
        recorded = record.read_text().strip() if record.exists() else None
        if recorded and file_digest(dest) == recorded and verify(dest, md5, sha256) is None:
            return dest
        log.warning("%s is not the complete download of %s; downloading again", dest, url)
        dest.unlink()
        record.unlink(missing_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout_s)
            problem = verify(part, md5, sha256)
            if problem:
                part.unlink()
                raise DownloadError(f"{url}: {problem}; the download was removed")
            if check is not None:
                check(part)  # e.g. an archive cut short by a server that sent no length
            break
        except urllib.error.HTTPError as e:
            if e.code in (408, 429) or e.code >= 500:
                reason = f"HTTP {e.code} {e.reason}"
            else:
                part.unlink(missing_ok=True)
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
        except _Restart:
            part.unlink(missing_ok=True)
            reason = "the partial file does not match the server's file"
        except ValueError as e:  # the check refused the complete file: fetch it anew
            part.unlink(missing_ok=True)
            reason = str(e)
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, OSError) as e:
            if isinstance(e, OSError) and e.errno in (28, 122):  # a full disk is not worth a retry
                raise
            reason = str(getattr(e, "reason", e)) or type(e).__name__
        if attempt == retries:
            kept = part.stat().st_size if part.exists() else 0
            if not kept:
                part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: gave up after {retries + 1} attempts: {reason}"
                                + (f" ({kept} bytes kept in {part} to resume)" if kept else
                                   " (nothing was kept)"))
        wait = backoff_s * 2 ** attempt
        log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", url, reason, wait,
                    attempt + 2, retries + 1)
        time.sleep(wait)
    digest = file_digest(part)
    os.replace(part, dest)
    record.write_text(digest + "\n")
    log.info("downloaded %s -> %s", url, dest)
    return dest


class _Restart(Exception):
    """The partial file cannot be continued: start again from byte 0."""


def _fetch(url: str, part: Path, timeout_s: float) -> None:
    """One attempt: continue `part` from where it stops (Range) or start it anew."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            # nothing left past what we have: complete only if the server says the file has
            # exactly that many bytes (Content-Range: bytes */N)
            total = (e.headers.get("Content-Range") or "").rpartition("/")[2]
            if total.isdigit() and int(total) == have:
                return
            raise _Restart from None
        raise
    with response:
        status = getattr(response, "status", 200)
        resumed = have and status == 206
        if not resumed:
            have = 0  # the server sent the whole file
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        progress = Progress(total or 0, os.path.basename(part.name[:-5]), unit="bytes",
                            every_s=5.0)
        progress.done = have
        got = have
        with open(part, "ab" if resumed else "wb") as f:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                f.write(block)
                got += len(block)
                progress.update(len(block))
        if total is not None and got < total:
            raise http.client.IncompleteRead(b"", total - got)
