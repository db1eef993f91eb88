"""Downloads and unpacked archives are outputs of jobs of their own (rules `download` and
`extract`, under resources/), so that a run without a shared file system fetches them like any
other file: a miniature imagenette and a model's weights served from 127.0.0.1, the manifest
naming images under the unpacked folder, the weights checked by the sha256 prefix in their name
and read by every model job from the download."""
from __future__ import annotations

import hashlib
import shutil

import pandas as pd
import pytest

from conftest import planned_jobs, snakemake
from test_sources import mini_imagenette
from unitscope.datasets.download import url_key

pytestmark = [pytest.mark.slow, pytest.mark.workflow]


def lite0_weights() -> str:
    from unitscope.models import _efficientnet_lite0_weights

    return _efficientnet_lite0_weights()


def test_downloads_and_the_unpacked_archive_are_jobs_of_their_own(tmp_path, server):
    md5 = mini_imagenette(server.root / "imagenette2-160.tgz", per_class=1)
    sha = hashlib.sha256(open(lite0_weights(), "rb").read()).hexdigest()
    shutil.copy(lite0_weights(), server.root / f"lite0-{sha[:8]}.pth")
    dataset = {"name": "imagenette", "id": "nette", "size": 160, "split": "val",
               "mirror": server.url, "md5": md5}
    config = {"dataset": dataset, "layers": ["block3"], "projection": "none", "k": 2, "units": 2,
              "occlusion": {"examples": 0},
              "model": {"name": "efficientnet_lite0", "weights": f"{server.url}/lite0-{sha[:8]}.pth"}}
    work = tmp_path / "work"
    work.mkdir()
    dry = snakemake(work, config, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert dry.stdout.count("rule download:") == 2 and dry.stdout.count("rule extract:") == 1
    assert not server.requests, "the plan downloaded something"

    r = snakemake(work, config)
    assert r.returncode == 0, r.stderr[-3000:]
    archive_key = url_key(f"{server.url}/imagenette2-160.tgz")
    weights_key = url_key(f"{server.url}/lite0-{sha[:8]}.pth")
    assert (work / "resources/downloads" / archive_key / "imagenette2-160.tgz.sha256").is_file()
    assert (work / "resources/downloads" / weights_key / f"lite0-{sha[:8]}.pth").read_bytes() == \
        open(lite0_weights(), "rb").read()
    manifest = pd.read_parquet(work / "results/nette/manifest.parquet")
    assert len(manifest) == 10
    assert all(p.startswith(f"resources/datasets/{archive_key}/") for p in manifest["path"])
    # each URL fetched once, by its download job: every model job read the downloaded weights
    # (a job that loaded the URL itself, through torch.hub, would have asked the server again)
    assert sorted(p for p, _ in server.requests) == sorted(["/imagenette2-160.tgz", f"/lite0-{sha[:8]}.pth"])

    again = snakemake(work, config, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]


def test_weights_whose_content_breaks_the_promise_of_their_name_are_refused(tmp_path, server):
    shutil.copy(lite0_weights(), server.root / "lite0-deadbeef.pth")
    config = {"dataset": {"name": "sample", "max_images": 4}, "layers": ["stem"], "projection": "none",
              "k": 2, "units": 2, "occlusion": {"examples": 0},
              "model": {"name": "efficientnet_lite0", "weights": f"{server.url}/lite0-deadbeef.pth"}}
    work = tmp_path / "work"
    work.mkdir()
    r = snakemake(work, config, "--", f"resources/downloads/{url_key(config['model']['weights'])}/lite0-deadbeef.pth")
    assert r.returncode != 0
    log = next((work / "resources/downloads").rglob("*.log")).read_text()
    assert "does not start with the deadbeef its name promises" in log, log[-2000:]
    assert not list((work / "resources/downloads").rglob("*.pth")), "a refused download was kept"
    assert {job[0] for job in planned_jobs(snakemake(work, config, "-n").stdout)} >= {"download", "activations"}


def test_tar_shards_from_urls_are_downloaded_by_their_own_jobs_and_read_where_they_lie(tmp_path, server):
    from test_stream import jpeg, write_tar

    checksums = {}
    for s in range(2):
        samples = [(f"s{s}/img{j}", {"jpg": jpeg(10 * s + j), "cls": str(j % 2).encode()}) for j in range(3)]
        checksums[f"part-{s}.tar"] = write_tar(server.root / f"part-{s}.tar", samples)
    config = {"dataset": {"name": "tar_shards", "id": "parts", "urls": f"{server.url}/part-{{0..1}}.tar",
                          "checksums": checksums},
              "layers": ["stem"], "projection": "none", "k": 2, "units": 2, "occlusion": {"examples": 0}}
    work = tmp_path / "work"
    work.mkdir()
    r = snakemake(work, config)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("rule download:") == 2
    manifest = pd.read_parquet(work / "results/parts/manifest.parquet")
    assert len(manifest) == 6 and sorted(manifest["shard"].unique()) == [0, 1]
    keys = {s: url_key(f"{server.url}/part-{s}.tar") for s in range(2)}
    assert set(manifest["path"]) == {f"resources/downloads/{keys[s]}/part-{s}.tar" for s in range(2)}
    top = pd.read_parquet(work / "results/parts/efficientnet_lite0/topk/stem.parquet")
    assert set(top["image_id"]) <= set(manifest["image_id"]) and len(top) == 2 * 32  # k=2 of the stem's 32 units
