"""Where images come from: every source turns its settings into candidate images (files with a
group and a label), fetching and unpacking archives into `resources/` first where needed, then
takes the deterministic, class-stratified subset that `max_images` / `per_class` ask for.

Caches are keyed by what they were made from: a download by its URL (`resources/downloads/`), an
extraction by the archive's sha256 (`resources/extracted/<stem>-<digest>/`, with a record of the
URL and digest it came from), so a new URL or a new archive is a new cache entry. Tar shards
(WebDataset layout) are read in place, never extracted."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
import urllib.parse
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import Candidate
from .download import DownloadError, fetch, file_digest
from .extract import check_archive, extract_once
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
SOURCES = ("sample", "folder", "imagenette", "imagewoof", "url", "imagenet_val", "tar_shards")


def _stem(name: str) -> str:
    return re.sub(r"(\.tar\.gz|\.tgz|\.tar|\.zip)$", "", name)


def archive_contents(url: str, resources: Path, md5: str | None = None,
                     sha256: str | None = None) -> Path:
    """The folder an archive at `url` unpacks to: fetched (or read in place for file://), read to
    its end, and extracted once per archive content."""
    archive = fetch(url, resources, md5=md5, sha256=sha256, check=check_archive)
    digest = file_digest(archive)
    target = resources / "extracted" / f"{_stem(archive.name)}-{digest[:12]}"
    return extract_once(archive, target, {"url": url, "sha256": digest})


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


def imagenet_val_candidates(tar: str, labels: str | None, resources: Path,
                            root: str | None = None) -> list[Candidate]:
    """The user's ILSVRC2012 validation tar (flat JPEGs), or the folder it was unpacked into
    (`root`); labels from a file of either `filename label` lines or one label per line in
    filename order."""
    if root is not None:
        return _imagenet_val_labelled(Path(root), labels)
    if not os.path.isfile(tar):
        raise FileNotFoundError(f"dataset.tar {tar!r} does not exist (ILSVRC2012_img_val.tar "
                                f"needs an image-net.org account; download it yourself)")
    st = os.stat(tar)
    identity = {"tar": os.path.abspath(tar), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    check_archive(tar)
    root = extract_once(tar, resources / "extracted" / f"{_stem(Path(tar).name)}-{key}", identity)
    return _imagenet_val_labelled(root, labels)


def _imagenet_val_labelled(root: Path, labels: str | None) -> list[Candidate]:
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


def tar_shard_list(urls: str | list[str]) -> list[str]:
    """The tar shards a `dataset.urls` value names: a list, or one string whose brace ranges
    ({000..146}, zero-padded like their first bound) expand to one entry per number."""
    if isinstance(urls, list):
        return list(urls)
    m = re.search(r"\{(\d+)\.\.(\d+)\}", urls)
    if not m:
        return [urls]
    lo, hi = m.group(1), m.group(2)
    if int(hi) < int(lo):
        raise ValueError(f"brace range {{{lo}..{hi}}} counts down")
    if int(hi) - int(lo) > 1_000_000:
        raise ValueError(f"brace range {{{lo}..{hi}}} names over a million shards")
    width = len(lo)
    return [s for i in range(int(lo), int(hi) + 1)
            for s in tar_shard_list(urls[:m.start()] + str(i).zfill(width) + urls[m.end():])]


def tar_shard_file(source: str, resources: Path, checksums: dict | None = None) -> Path:
    """The local file of one tar shard: a path as it is, a URL fetched (resumed, checked)."""
    name = os.path.basename(urllib.parse.urlparse(source).path) if "://" in source else os.path.basename(source)
    sha256 = (checksums or {}).get(name)
    if "://" in source:
        return fetch(source, resources, sha256=sha256)
    if sha256:
        digest = file_digest(source)
        if digest != sha256.lower():
            raise DownloadError(f"{source}: sha256 mismatch: expected {sha256}, got {digest}")
    return Path(source)


def tar_candidates(tar: Path, shard: int, prefix: str = "") -> list[Candidate]:
    """The images of one WebDataset-style tar: members grouped by sample key (the path up to the
    first '.' of the file name, after `prefix`, which keeps keys of different tars apart); the
    image is the member with an image suffix; the label comes from `<key>.cls` (text) or
    `<key>.json` (its "label" or "class"). Read in place: each candidate records where its bytes
    are and what the tar was (its sha256, size and times). Link members become rejects: a tar read
    in place has no bytes for them."""
    from .tars import tar_stamp

    stamp = tar_stamp(tar)
    samples: dict[str, dict] = {}
    links = []
    try:
        with tarfile.open(tar, "r:") as t:
            for m in t:
                if m.issym() or m.islnk():
                    if os.path.splitext(m.name)[1].lower() in IMAGE_SUFFIXES:
                        links.append(m)
                    continue
                if not m.isfile():
                    continue
                folder, _, base = m.name.rpartition("/")
                key, _, ext = base.partition(".")
                key = prefix + (f"{folder}/{key}" if folder else key)
                entry = samples.setdefault(key, {})
                ext = "." + ext.lower()
                if ext in IMAGE_SUFFIXES and "image" not in entry:
                    entry["image"] = m
                elif ext in (".cls", ".json"):
                    data = t.extractfile(m).read(1 << 16)
                    entry["label"] = _label_of(ext, data)
    except (tarfile.TarError, EOFError) as e:
        raise ValueError(f"tar shard {tar} cannot be read ({e}); is it an uncompressed .tar?") from None
    out = []
    for key, entry in samples.items():
        m = entry.get("image")
        if m is not None:
            out.append(Candidate(str(tar), key, entry.get("label"), None, m.name, m.offset_data,
                                 m.size, shard, stamp))
    kind = {True: "symbolic", False: "hard"}
    out += [Candidate(str(tar), prefix + m.name, None, None, m.name, None, None, shard, stamp,
                      reject=f"{kind[m.issym()]} link member (to {m.linkname}): a tar read in "
                             f"place has no bytes of its own for it")
            for m in links]
    return out


def _label_of(ext: str, data: bytes) -> str | None:
    text = data.decode("utf-8", "replace").strip()
    if ext == ".cls":
        return text or None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if isinstance(obj, dict):
        for k in ("label", "class", "cls"):
            if k in obj:
                return str(obj[k])
    return None


def candidates(cfg: dict, resources: str | os.PathLike = "resources",
               local: list[str] | None = None) -> list[Candidate]:
    """Candidate images of a dataset config (the `dataset:` block of config.yaml). `local`: the
    files the workflow's jobs fetched for it (plan.dataset_sources: the folder an archive was
    unpacked into, a storage folder's copy, the tar shards), used instead of fetching here."""
    resources = Path(resources)
    name = cfg["name"]
    if name == "sample":
        cands = sample_candidates()
    elif name == "folder":
        cands = folder_candidates(local[0] if local else cfg["path"])
    elif name in ARCHIVES and local:
        splits = [p for p in Path(local[0]).rglob(cfg.get("split", "val")) if p.is_dir()]
        if not splits:
            raise ValueError(f"{local[0]} has no {cfg.get('split', 'val')!r} folder")
        cands = _label_wordnet(folder_candidates(splits[0]))
    elif name == "url" and local:
        cands = folder_candidates(_unwrap(Path(local[0])))
    elif name in ARCHIVES:
        size, split = str(cfg.get("size", 160)), cfg.get("split", "val")
        if size not in ARCHIVES[name]:
            raise ValueError(f"dataset.size {size!r}; valid: {', '.join(ARCHIVES[name])}")
        filename, md5 = ARCHIVES[name][size]
        base = cfg.get("mirror") or FASTAI
        root = archive_contents(base.rstrip("/") + "/" + filename, resources,
                                md5=cfg.get("md5", md5), sha256=cfg.get("sha256"))
        splits = [p for p in root.rglob(split) if p.is_dir()]
        if not splits:
            raise ValueError(f"{filename} has no {split!r} folder")
        cands = _label_wordnet(folder_candidates(splits[0]))
    elif name == "url":
        root = archive_contents(cfg["url"], resources, md5=cfg.get("md5"), sha256=cfg.get("sha256"))
        cands = folder_candidates(_unwrap(root))
    elif name == "imagenet_val":
        cands = imagenet_val_candidates(cfg["tar"], cfg.get("labels"), resources,
                                        local[0] if local else None)
    elif name == "tar_shards":
        return tar_shard_candidates(cfg, resources, local)
    else:
        raise ValueError(f"dataset.name {name!r}; valid: {', '.join(SOURCES)}")
    return subset(cands, cfg.get("max_images"), cfg.get("per_class"), cfg.get("seed", 0))


def tar_shard_candidates(cfg: dict, resources: Path, local: list[str] | None = None) -> list[Candidate]:
    """Every image of every tar shard, in shard order (a subset keeps whole shards' order). Sample
    keys are made unique by tar (its file name, or its position where two tars share a name); the
    same tar twice (the same content) is refused."""
    sources = tar_shard_list(cfg["urls"])
    names = [os.path.basename(urllib.parse.urlparse(s).path if "://" in s else s) for s in sources]
    out: list[Candidate] = []
    seen: dict[str, str] = {}
    for i, (source, name) in enumerate(zip(sources, names)):
        prefix = (name if names.count(name) == 1 else f"{i:03d}-{name}") + "/"
        # a URL's tar was fetched and checked by its own job (rule download)
        tar = Path(local[i]) if local and "://" in source else \
            tar_shard_file(local[i] if local else source, resources, cfg.get("checksums"))
        cands = tar_candidates(tar, i, prefix)
        digest = cands[0].stamp[0] if cands else None
        if digest in seen:
            raise ValueError(f"dataset.urls: {source} and {seen[digest]} are the same tar (sha256 "
                             f"{digest[:16]}…); list each tar once")
        if digest:
            seen[digest] = source
        out += cands
    rejects = [c for c in out if c.reject]
    return subset([c for c in out if not c.reject], cfg.get("max_images"), cfg.get("per_class"),
                  cfg.get("seed", 0)) + rejects


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
