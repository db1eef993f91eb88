"""Inputs at scale: images streamed from their files give the very pixels the store holds and the
same tables whatever the shard count; WebDataset tar shards are read in place, one inference
shard each, fetched with checksums; bf16 inference agrees with fp32."""
from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pandas as pd
import pytest

from conftest import plan_of
from unitscope import stages
from unitscope.datasets.index import index_images
from unitscope.datasets.sources import candidates
from unitscope.inputs import DecodedImages, Preprocessing, StoredImages, decoded_batches, write_inputs
from unitscope.topk import select_topk
from unitscope.verify import verify_examples

MODEL = {"name": "efficientnet_lite0", "weights": "imagenet"}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sample")
    manifest = tmp / "manifest.parquet"
    index_images(candidates({"name": "sample", "max_images": 18, "seed": 5}), manifest,
                 tmp / "rejected.parquet", threads=2)
    stages.layers(MODEL, ["block3"], str(tmp / "layers.parquet"), [str(tmp / "rf.parquet")])
    return tmp, manifest


def test_stored_and_streamed_pixels_are_bit_identical(sample):
    tmp, manifest = sample
    prep = Preprocessing(256, 224, "bicubic")
    shards = [tmp / f"inputs-{i}.h5" for i in range(2)]
    for i, p in enumerate(shards):
        write_inputs(manifest, p, i, 2, prep, threads=2)
    stored, decoded = StoredImages(shards, manifest, prep), DecodedImages(manifest, prep)
    rows = pd.read_parquet(manifest)
    batched = np.concatenate([b for _, b in decoded_batches(rows, prep, 5, 3)])
    for i in range(len(rows)):
        assert np.array_equal(stored[i], decoded[i]) and np.array_equal(batched[i], decoded[i])


def topk_of(tmp, manifest, shards, store, precision="fp32"):
    outs = []
    for i in range(shards):
        inputs = None
        if store:
            inputs = str(tmp / f"store-{shards}-{i}.h5")
            stages.inputs(str(manifest), MODEL, inputs, i, shards, threads=2)
        out = str(tmp / f"acts-{shards}-{store}-{precision}-{i}.h5")
        stages.activations(str(manifest), MODEL, ["block3"], [out], i, shards, inputs,
                           batch_size=4, device="cpu", precision=precision, threads=2)
        outs.append(out)
    return select_topk(outs, manifest, tmp / "layers.parquet", tmp / "rf.parquet", "block3", k=4)[0]


def test_stream_and_store_and_any_shard_count_give_identical_tables(sample):
    tmp, manifest = sample
    streamed = topk_of(tmp, manifest, 1, store=False)
    stored = topk_of(tmp, manifest, 3, store=True)
    pd.testing.assert_frame_equal(streamed, stored)


def test_bf16_inference_agrees_with_fp32_and_passes_verification(sample):
    """Autocast bf16 (here on the CPU): at least 95% of the top-k rows are also fp32 top-k rows
    of the same unit (rank swaps between near-ties allowed), and re-verification in fp32
    accepts the bf16 values within its bf16 tolerance."""
    tmp, manifest = sample
    fp32 = topk_of(tmp, manifest, 1, store=False)
    bf16 = topk_of(tmp, manifest, 1, store=False, precision="bf16")
    want = set(zip(fp32["unit"], fp32["image_id"]))
    agree = np.mean([(u, i) in want for u, i in zip(bf16["unit"], bf16["image_id"])])
    assert agree >= 0.95, agree
    from unitscope.models import MODELS, build_model

    spec = MODELS["efficientnet_lite0"]
    rows = bf16[bf16["unit"] < 6].assign(kind="top")
    verify_examples(rows, DecodedImages(manifest, Preprocessing.of(spec)), build_model(spec),
                    "_blocks.3", spec.mean, spec.std, precision="bf16", layer="block3")


def jpeg(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    im = np.full((60, 80, 3), rng.integers(0, 255, 3), np.uint8)
    im[10:30, 20:40] = rng.integers(0, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def write_tar(path, samples):
    with tarfile.open(path, "w") as t:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tar_shards_are_read_in_place_one_inference_shard_each(tmp_path, server):
    checksums = {}
    images = {}
    for s in range(3):
        samples = []
        for j in range(4):
            key = f"s{s}/img{j:02d}"
            images[key] = jpeg(10 * s + j)
            samples.append((key, {"jpg": images[key], "cls": str((s + j) % 2).encode()}))
        if s == 1:
            samples.append(("s1/broken", {"jpg": images[key][:100]}))  # set aside, not fatal
        checksums[f"train-{s:03d}.tar"] = write_tar(server.root / f"train-{s:03d}.tar", samples)
    server.cut_once.add("/train-001.tar")  # resumed with a Range request
    config = {"dataset": {"name": "tar_shards", "urls": f"{server.url}/train-{{000..002}}.tar",
                          "checksums": checksums}, "layers": ["block3"], "device": "cpu"}
    plan = plan_of(config)
    assert plan.shards == 3
    spec = plan.dataset
    manifest, rejected = tmp_path / "m.parquet", tmp_path / "r.parquet"
    stages.dataset(spec, str(manifest), str(rejected), str(tmp_path / "resources"))
    m = pd.read_parquet(manifest)
    assert len(m) == 12 and list(m["shard"]) == [0] * 4 + [1] * 4 + [2] * 4
    assert set(m["label"]) == {"0", "1"} and m["member"].str.endswith(".jpg").all()
    assert list(pd.read_parquet(rejected)["path"].str.rsplit("::", n=1).str[-1]) == ["s1/broken.jpg"]
    assert not list((tmp_path / "resources").rglob("*.jpg"))  # nothing extracted
    assert any(r[1] for r in server.requests if r[0] == "/train-001.tar")  # resumed
    # the bytes each row points at are the member's bytes
    for row in m.itertuples():
        with open(row.path, "rb") as f:
            f.seek(row.member_offset)
            assert f.read(row.member_size) == images[row.group.split("/", 1)[1]]  # key after the tar
    # one inference shard per tar: the shard files hold exactly that tar's images
    stages.layers(MODEL, ["block3"], str(tmp_path / "layers.parquet"), [str(tmp_path / "rf.parquet")])
    outs = [str(tmp_path / f"a{i}.h5") for i in range(3)]
    for i in range(3):
        stages.activations(str(manifest), MODEL, ["block3"], [outs[i]], i, 3, batch_size=3,
                           device="cpu", threads=2)
    top = select_topk(outs, manifest, tmp_path / "layers.parquet", tmp_path / "rf.parquet", "block3", k=2)[0]
    assert set(top["image_id"]) <= set(m["image_id"])
