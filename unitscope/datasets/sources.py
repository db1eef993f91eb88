"""Where images come from: every source turns its settings into candidate images (files with a
group and a label), fetching and unpacking archives into `resources/` first where needed, then
takes the deterministic, class-stratified subset that `max_images` / `per_class` ask for."""
from __future__ import annotations

import logging
import os
import re
import urllib.parse
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import Candidate
from .download import download
from .extract import safe_extract
from .index import IMAGE_SUFFIXES, folder_candidates
from .sample import sample_candidates

log = logging.getLogger("unitscope")

FASTAI = "https://s3.amazonaws.com/fast-ai-imageclas/"
# (archive, md5) per size; imagewoof's checksums are not published next to its archives
ARCHIVES = {
    "imagenette": {"160": ("imagenette2-160.tgz", "e793b78cc4c9e9a4ccc0c1155377a412"),
                   "320": ("imagenette2-320.tgz", "3df6f0d01a2c9592104656642f5e78a3"),
                   "full": ("imagenette2.tgz", "fe2fc210e6bb7c5664d602c3cd71e612")},
    "imagewoof": {"160": ("imagewoof2-160.tgz", None), "320": ("imagewoof2-320.tgz", None),
                  "full": ("imagewoof2.tgz", None)},
}
WORDNET = {  # the classes of imagenette and imagewoof: WordNet id -> name
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888605": "parachute",
    "n02086240": "Shih-Tzu", "n02087394": "Rhodesian ridgeback", "n02088364": "beagle",
    "n02089973": "English foxhound", "n02093754": "Border terrier", "n02096294": "Australian terrier",
    "n02099601": "golden retriever", "n02105641": "Old English sheepdog", "n02111889": "Samoyed",
    "n02115641": "dingo",
}
SOURCES = ("sample", "folder", "imagenette", "imagewoof", "url", "imagenet_val")


def default_id(cfg: dict) -> str:
    """The results folder name of a dataset when the config gives no `id`."""
    if cfg.get("id"):
        return cfg["id"]
    if cfg["name"] in ARCHIVES:
        return f"{cfg['name']}-{cfg.get('size', 160)}-{cfg.get('split', 'val')}"
    return cfg["name"]


def extracted(archive: Path, resources: Path) -> Path:
    """The archive's contents under resources/ (extracted once, reused after)."""
    stem = re.sub(r"(\.tar\.gz|\.tgz|\.tar|\.zip)$", "", archive.name)
    target = resources / f"{stem}.d"
    if not target.exists():
        safe_extract(archive, target)
    return target


def _unwrap(root: Path) -> Path:
    """Descend through folders that are the only entry of their parent (archives usually wrap
    everything in one top folder), so that class folders give the labels."""
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir():
            return root
        root = entries[0]


def _label_wordnet(cands: list[Candidate]) -> list[Candidate]:
    return [Candidate(c.path, c.group, f"{WORDNET.get(c.label, c.label)} ({c.label})"
                      if c.label else None) for c in cands]


def imagenet_val_candidates(tar: str, labels: str | None, resources: Path) -> list[Candidate]:
    """The user's ILSVRC2012 validation tar (flat JPEGs); labels from a file of either
    `filename label` lines or one label per line in filename order."""
    if not os.path.isfile(tar):
        raise FileNotFoundError(f"dataset.tar {tar!r} does not exist (ILSVRC2012_img_val.tar "
                                f"needs an image-net.org account; download it yourself)")
    root = extracted(Path(tar), resources)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    by_name: dict[str, str] = {}
    if labels:
        lines = [ln.split() for ln in Path(labels).read_text().splitlines() if ln.strip()]
        if all(len(ln) >= 2 for ln in lines):
            by_name = {ln[0].rsplit("/", 1)[-1]: " ".join(ln[1:]) for ln in lines}
        elif len(lines) == len(files):
            by_name = {p.name: ln[0] for p, ln in zip(files, lines)}
        else:
            raise ValueError(f"label file {labels}: {len(lines)} lines for {len(files)} images")
    return [Candidate(str(p), p.name, by_name.get(p.name)) for p in files]


def candidates(cfg: dict, resources: str | os.PathLike = "resources") -> list[Candidate]:
    """Candidate images of a dataset config (the `dataset:` block of config.yaml)."""
    resources = Path(resources)
    name = cfg["name"]
    if name == "sample":
        cands = sample_candidates()
    elif name == "folder":
        cands = folder_candidates(cfg["path"])
    elif name in ARCHIVES:
        size, split = str(cfg.get("size", 160)), cfg.get("split", "val")
        if size not in ARCHIVES[name]:
            raise ValueError(f"dataset.size {size!r}; valid: {', '.join(ARCHIVES[name])}")
        filename, md5 = ARCHIVES[name][size]
        base = cfg.get("mirror") or FASTAI
        archive = download(base.rstrip("/") + "/" + filename, resources / filename,
                           md5=cfg.get("md5", md5), sha256=cfg.get("sha256"))
        root = extracted(archive, resources)
        splits = [p for p in root.rglob(split) if p.is_dir()]
        if not splits:
            raise ValueError(f"{archive} has no {split!r} folder")
        cands = _label_wordnet(folder_candidates(splits[0]))
    elif name == "url":
        url = cfg["url"]
        filename = os.path.basename(urllib.parse.urlparse(url).path) or "archive"
        archive = download(url, resources / filename, md5=cfg.get("md5"), sha256=cfg.get("sha256"))
        cands = folder_candidates(_unwrap(extracted(archive, resources)))
    elif name == "imagenet_val":
        cands = imagenet_val_candidates(cfg["tar"], cfg.get("labels"), resources)
    else:
        raise ValueError(f"dataset.name {name!r}; valid: {', '.join(SOURCES)}")
    return subset(cands, cfg.get("max_images"), cfg.get("per_class"), cfg.get("seed", 0))


def subset(cands: list[Candidate], max_images: int | None, per_class: int | None,
           seed: int = 0) -> list[Candidate]:
    """A deterministic class-stratified subset: at most `per_class` of each label, then at most
    `max_images` in all, taken in turn from each class; kept in the original order."""
    if max_images is None and per_class is None:
        return cands
    rng = np.random.default_rng(seed)
    by_class: dict[str | None, list[int]] = defaultdict(list)
    for i, c in enumerate(cands):
        by_class[c.label].append(i)
    queues = []
    for label in sorted(by_class, key=lambda x: (x is None, x or "")):
        idx = [by_class[label][j] for j in rng.permutation(len(by_class[label]))]
        queues.append(idx[:per_class] if per_class else idx)
    chosen: list[int] = []
    limit = max_images if max_images is not None else sum(map(len, queues))
    for depth in range(max(map(len, queues), default=0)):
        for q in queues:
            if depth < len(q) and len(chosen) < limit:
                chosen.append(q[depth])
    return [cands[i] for i in sorted(chosen)]
