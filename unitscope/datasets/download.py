"""Downloads that a rerun can trust: progress, retries with backoff, resume of a partial file with
an HTTP Range request where the server allows it, checksum verified before the file is moved into
place. A failure names the URL and what happened and leaves no file that a rerun would take for
complete (a partial `.part` file is kept only to be resumed, never used)."""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..progress import Progress

log = logging.getLogger("unitscope")
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed for good; the message names the URL."""


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
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


def download(url: str, dest: str | os.PathLike, md5: str | None = None, sha256: str | None = None,
             retries: int = 4, backoff_s: float = 1.0, timeout_s: float = 30.0) -> Path:
    """Fetch `url` to `dest` (skipped if `dest` exists and matches the checksums)."""
    dest = Path(dest)
    if dest.exists():
        if verify(dest, md5, sha256) is None:
            return dest
        log.warning("%s does not match its checksum; downloading again", dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout_s)
            break
        except urllib.error.HTTPError as e:
            if e.code in (408, 429) or e.code >= 500:
                reason = f"HTTP {e.code} {e.reason}"
            else:
                part.unlink(missing_ok=True)
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, OSError) as e:
            reason = str(getattr(e, "reason", e)) or type(e).__name__
        if attempt == retries:
            raise DownloadError(f"{url}: gave up after {retries + 1} attempts: {reason} "
                                f"({part.stat().st_size if part.exists() else 0} bytes kept in "
                                f"{part} to resume)")
        wait = backoff_s * 2 ** attempt
        log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", url, reason, wait,
                    attempt + 2, retries + 1)
        time.sleep(wait)
    problem = verify(part, md5, sha256)
    if problem:
        part.unlink()
        raise DownloadError(f"{url}: {problem}; the download was removed")
    os.replace(part, dest)
    log.info("downloaded %s -> %s", url, dest)
    return dest


def _fetch(url: str, part: Path, timeout_s: float) -> None:
    """One attempt: continue `part` from where it stops (Range) or start it anew."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left past what we have: the file may be complete
            return
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
