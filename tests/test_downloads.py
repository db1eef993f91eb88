"""Downloads and archives against a server on 127.0.0.1 that the test starts: good, wrong
checksum, 404, cut connection resumed with Range, slow and silent servers; unsafe archives."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile

import pytest

from unitscope.datasets.download import DownloadError, download
from unitscope.datasets.extract import UnsafeArchive, safe_extract


def payload(n=300_000) -> bytes:
    return os.urandom(n)


def test_good_download_is_verified_and_moved_into_place(tmp_path, server):
    data = payload()
    (server.root / "a.bin").write_bytes(data)
    dest = download(f"{server.url}/a.bin", tmp_path / "res" / "a.bin",
                    md5=hashlib.md5(data).hexdigest())
    assert dest.read_bytes() == data
    assert not list((tmp_path / "res").glob("*.part"))
    n = len(server.requests)
    download(f"{server.url}/a.bin", dest, md5=hashlib.md5(data).hexdigest())  # cached: no request
    assert len(server.requests) == n


def test_wrong_checksum_names_the_url_and_leaves_nothing(tmp_path, server):
    (server.root / "a.bin").write_bytes(payload())
    with pytest.raises(DownloadError, match=r"/a.bin: md5 mismatch: expected 0{32}"):
        download(f"{server.url}/a.bin", tmp_path / "a.bin", md5="0" * 32)
    assert list(tmp_path.glob("a.bin*")) == []


def test_404_names_the_url_and_leaves_nothing(tmp_path, server):
    with pytest.raises(DownloadError, match=r"/missing.tgz: HTTP 404"):
        download(f"{server.url}/missing.tgz", tmp_path / "m.tgz", backoff_s=0.01)
    assert list(tmp_path.glob("m.tgz*")) == []


def test_connection_cut_halfway_is_resumed_with_range(tmp_path, server):
    data = payload()
    (server.root / "a.bin").write_bytes(data)
    server.cut_once.add("/a.bin")
    dest = download(f"{server.url}/a.bin", tmp_path / "a.bin", backoff_s=0.01,
                    sha256=hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data
    assert server.requests[0] == ("/a.bin", None)
    assert server.requests[1][1] == f"bytes={len(data) // 2}-"  # resumed where it stopped


def test_cut_connection_without_range_support_restarts_cleanly(tmp_path, server):
    data = payload()
    (server.root / "a.bin").write_bytes(data)
    server.cut_once.add("/a.bin")
    server.range_ok = False
    dest = download(f"{server.url}/a.bin", tmp_path / "a.bin", backoff_s=0.01,
                    md5=hashlib.md5(data).hexdigest())
    assert dest.read_bytes() == data


def test_slow_server_still_delivers(tmp_path, server):
    data = payload(40_000)
    (server.root / "a.bin").write_bytes(data)
    server.delay_s = 0.02
    assert download(f"{server.url}/a.bin", tmp_path / "a.bin", timeout_s=5).read_bytes() == data


def test_silent_server_times_out_retries_and_gives_up_naming_the_url(tmp_path, server):
    (server.root / "a.bin").write_bytes(payload(1000))
    server.silent_s = 1.0
    with pytest.raises(DownloadError, match=r"/a.bin: gave up after 2 attempts: .*timed out"):
        download(f"{server.url}/a.bin", tmp_path / "a.bin", retries=1, backoff_s=0.01,
                 timeout_s=0.2)
    assert not (tmp_path / "a.bin").exists()


def write_tar(path, members):
    with tarfile.open(path, "w:gz") as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)


def test_zip_with_dot_dot_is_refused_and_writes_nothing(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("ok/a.txt", "fine")
        z.writestr("../evil.txt", "gotcha")
    with pytest.raises(UnsafeArchive, match="'../evil.txt' would be written outside"):
        safe_extract(tmp_path / "evil.zip", tmp_path / "out" / "x")
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "x").exists()


def test_tar_with_absolute_path_or_outward_symlink_is_refused(tmp_path):
    data = b"payload"
    absolute = tarfile.TarInfo(str(tmp_path / "abs.txt"))
    absolute.size = len(data)
    write_tar(tmp_path / "abs.tgz", [(absolute, data)])
    with pytest.raises(UnsafeArchive, match="refused"):
        safe_extract(tmp_path / "abs.tgz", tmp_path / "o1")
    assert not (tmp_path / "abs.txt").exists()
    link = tarfile.TarInfo("images/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
    write_tar(tmp_path / "link.tgz", [(link, None)])
    with pytest.raises(UnsafeArchive, match="refused"):
        safe_extract(tmp_path / "link.tgz", tmp_path / "o2")
    assert not (tmp_path / "o2").exists()
    dev = tarfile.TarInfo("dev")
    dev.type = tarfile.CHRTYPE
    write_tar(tmp_path / "dev.tgz", [(dev, None)])
    with pytest.raises(UnsafeArchive):
        safe_extract(tmp_path / "dev.tgz", tmp_path / "o3")


def test_archive_that_expands_absurdly_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", b"\0" * 5_000_000)
    with pytest.raises(UnsafeArchive, match="would expand"):
        safe_extract(tmp_path / "bomb.zip", tmp_path / "o", max_ratio=100)
    assert not (tmp_path / "o").exists()


def test_good_tar_extracts_in_place(tmp_path):
    info = tarfile.TarInfo("imgs/cat/a.txt")
    info.size = 3
    write_tar(tmp_path / "good.tgz", [(info, b"abc")])
    out = safe_extract(tmp_path / "good.tgz", tmp_path / "good")
    assert (out / "imgs/cat/a.txt").read_bytes() == b"abc"


def tgz_bytes(names: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in names.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_an_archive_cut_short_without_content_length_is_never_kept(tmp_path, server):
    """A server that sends no length and drops the connection halfway: the client cannot tell,
    but the archive is read to its end before it is trusted, so the download is fetched again."""
    from unitscope.datasets.download import fetch
    from unitscope.datasets.extract import check_archive

    data = tgz_bytes({f"img/{i}.bin": os.urandom(20_000) for i in range(10)})
    (server.root / "a.tgz").write_bytes(data)
    server.no_length = True
    server.cut_once.add("/a.tgz")
    path = fetch(f"{server.url}/a.tgz", tmp_path / "res", check=check_archive, backoff_s=0.01)
    assert path.read_bytes() == data
    assert len(server.requests) == 2  # the cut copy was refused and fetched anew
    # a copy damaged on disk after the download is not taken as complete either
    path.write_bytes(data[:1000])
    fetch(f"{server.url}/a.tgz", tmp_path / "res", check=check_archive)
    assert path.read_bytes() == data and len(server.requests) == 3


def test_a_partial_file_that_does_not_match_the_server_is_restarted(tmp_path, server):
    from unitscope.datasets.download import cached_path, fetch

    data = payload(50_000)
    (server.root / "a.bin").write_bytes(data)
    url = f"{server.url}/a.bin"
    part = cached_path(url, tmp_path / "res").with_name("a.bin.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(os.urandom(60_000))  # longer than the file: the server answers 416 */50000
    assert fetch(url, tmp_path / "res", backoff_s=0.01).read_bytes() == data
    # every URL has its own folder, so another URL's partial file is never continued
    other = cached_path(f"{server.url}/b/a.bin", tmp_path / "res")
    assert other.parent != part.parent and other.name == part.name[:-5]


def test_a_missing_file_url_fails_at_once_and_ftp_is_refused(tmp_path):
    import time

    from unitscope.datasets.download import fetch

    t = time.perf_counter()
    with pytest.raises(DownloadError, match="file:///nowhere/x.tgz: no such file"):
        fetch("file:///nowhere/x.tgz", tmp_path)
    with pytest.raises(DownloadError, match="unsupported scheme 'ftp'"):
        fetch("ftp://example.org/x.tgz", tmp_path)
    assert time.perf_counter() - t < 1  # no retries
