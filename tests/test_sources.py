"""Dataset sources against archives the tests build and serve from 127.0.0.1: a miniature
imagenette (its real layout), an arbitrary archive URL, and an ImageNet-validation-style tar."""
from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unitscope.datasets.index import index_images
from unitscope.datasets.sources import WORDNET, candidates
from unitscope.plan import default_dataset_id

IMAGENETTE = list(WORDNET)[:10]


def jpeg(seed: int, size=(80, 60)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def add(t: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


def mini_imagenette(path, per_class=3, corrupt=True):
    """imagenette2-160.tgz's layout: imagenette2-160/{train,val}/<wnid>/<name>.JPEG"""
    with tarfile.open(path, "w:gz") as t:
        for split in ("train", "val"):
            for c, wnid in enumerate(IMAGENETTE):
                for i in range(per_class):
                    add(t, f"imagenette2-160/{split}/{wnid}/{wnid}_{i}.JPEG", jpeg(c * 100 + i))
        if corrupt:
            add(t, f"imagenette2-160/val/{IMAGENETTE[0]}/broken.JPEG", jpeg(1)[:200])
        add(t, "imagenette2-160/noisy_imagenette.csv", b"path,noisy_labels_0\n")
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_imagenette_is_fetched_checked_extracted_and_labelled(tmp_path, server):
    md5 = mini_imagenette(server.root / "imagenette2-160.tgz")
    cfg = {"name": "imagenette", "size": 160, "split": "val", "mirror": server.url, "md5": md5}
    cands = candidates(cfg, tmp_path / "resources")
    assert len(cands) == 10 * 3 + 1
    assert {c.label for c in cands} == {f"{WORDNET[w]} ({w})" for w in IMAGENETTE}
    assert all("/val/" in c.path for c in cands)
    manifest = index_images(cands, tmp_path / "m.parquet", tmp_path / "r.parquet")
    assert len(manifest) == 30
    assert pd.read_parquet(tmp_path / "r.parquet")["path"].str.endswith("broken.JPEG").all()
    # a second call reuses the archive and its extraction: no new request
    n = len(server.requests)
    assert len(candidates({**cfg, "max_images": 12}, tmp_path / "resources")) == 12
    assert len(server.requests) == n
    assert default_dataset_id(cfg) == "imagenette-160-val"


def test_imagenette_with_the_wrong_checksum_is_not_used(tmp_path, server):
    mini_imagenette(server.root / "imagenette2-160.tgz")
    with pytest.raises(Exception, match="imagenette2-160.tgz: md5 mismatch: expected e793b78c"):
        candidates({"name": "imagenette", "size": 160, "split": "val", "mirror": server.url},
                   tmp_path / "resources")
    assert not list((tmp_path / "resources").rglob("*.tgz"))


def test_url_archive_with_class_folders(tmp_path, server):
    with zipfile.ZipFile(server.root / "pets.zip", "w") as z:
        for i in range(3):
            z.writestr(f"pets/cat/{i}.jpg", jpeg(i))
            z.writestr(f"pets/dog/{i}.jpg", jpeg(10 + i))
    sha = hashlib.sha256((server.root / "pets.zip").read_bytes()).hexdigest()
    cands = candidates({"name": "url", "url": f"{server.url}/pets.zip", "sha256": sha,
                        "per_class": 2}, tmp_path / "res")
    # the archive wraps everything in pets/: labels come from the class folders below it
    assert sorted(c.label for c in cands) == ["cat", "cat", "dog", "dog"]


def test_imagenet_val_tar_with_a_label_file(tmp_path):
    with tarfile.open(tmp_path / "ILSVRC2012_img_val.tar", "w") as t:
        for i in range(1, 5):
            add(t, f"ILSVRC2012_val_{i:08d}.JPEG", jpeg(i))
    (tmp_path / "labels.txt").write_text("\n".join(["65", "970", "230", "809"]))
    cands = candidates({"name": "imagenet_val", "tar": str(tmp_path / "ILSVRC2012_img_val.tar"),
                        "labels": str(tmp_path / "labels.txt")}, tmp_path / "res")
    assert [c.label for c in cands] == ["65", "970", "230", "809"]
    with pytest.raises(FileNotFoundError, match="image-net.org account"):
        candidates({"name": "imagenet_val", "tar": str(tmp_path / "nope.tar")}, tmp_path / "res")


def test_a_new_archive_under_the_same_name_is_downloaded_and_extracted_anew(tmp_path, server):
    """The url dataset switched to another archive with the same file name: a new URL is a new
    download, a new checksum at the same URL too, and each archive gets its own extraction."""
    def pets(path, n):
        with zipfile.ZipFile(path, "w") as z:
            for i in range(n):
                z.writestr(f"pets/cat/{i}.jpg", jpeg(i))
        return hashlib.sha256(path.read_bytes()).hexdigest()

    (server.root / "a").mkdir()
    (server.root / "b").mkdir()
    sha_a, sha_b = pets(server.root / "a" / "pets.zip", 2), pets(server.root / "b" / "pets.zip", 3)
    res = tmp_path / "res"
    assert len(candidates({"name": "url", "url": f"{server.url}/a/pets.zip", "sha256": sha_a}, res)) == 2
    assert len(candidates({"name": "url", "url": f"{server.url}/b/pets.zip", "sha256": sha_b}, res)) == 3
    # without a checksum a new URL is still requested
    n = len(server.requests)
    assert len(candidates({"name": "url", "url": f"{server.url}/b/pets.zip?v=2"}, res)) == 3
    assert len(server.requests) == n + 1
    # the same URL with new content and its new checksum: fetched again, extracted anew
    sha_new = pets(server.root / "a" / "pets.zip", 4)
    assert len(candidates({"name": "url", "url": f"{server.url}/a/pets.zip", "sha256": sha_new}, res)) == 4
    assert len(list((res / "extracted").iterdir())) == 3
    for folder in (res / "extracted").iterdir():
        assert (folder / ".unitscope-source.json").exists()
