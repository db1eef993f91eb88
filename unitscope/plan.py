"""The experiment plan: the validated config turned into one typed object — the dataset, the model,
each layer's settings, every path of the results layout and the shard names — with every check the
schema cannot make done before any job runs. `common.smk`, the command line, the gallery and the
tests all read the results layout from here, so it is written down once.

    config.yaml ──schema──▶ build_plan() ──▶ Plan ──▶ rules (common.smk) ──▶ stages ──▶ files

A `PlanError` is a one-line message that names the config key, the bad value and the valid ones."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass

import numpy as np

from .models import ModelConfig, ModelSpec, factory_file, projection_method, weights_file

URL = re.compile(r"^(https?|file)://")
FAN_IN = 64  # shards one top-k/ranges job reads; more shards are merged in a tree of blocks
PER_LAYER_KEYS = ("k", "distinct", "units", "pick", "seed", "patch_max_px", "display_px",
                  "panels", "figure", "n_ranges", "per_range")
SAMPLE_IMAGES = 408  # crops the sample dataset makes (datasets/sample.py)
GALLERY_NAMES = ("images", "inputs", "index.html", "style.css")  # beside the layers' folders
OCCLUSION_SUFFIX = "-occlusion"  # grids/L-occlusion.png


class PlanError(ValueError):
    """A config the run cannot do, said in one line that names the key."""


def safe_name(value: str, key: str) -> str:
    """A name used as one path component under results/: refuses empty, '.', '..' and separators."""
    if not isinstance(value, str) or value in ("", ".", "..") or not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise PlanError(f"config key '{key}': {value!r} cannot name a folder under results/ "
                        f"(use letters, digits, '_', '-' and '.', not '.' or '..' alone)")
    return value


@dataclass(frozen=True)
class Layout:
    """Every path of the results of one dataset and model. Methods take a layer name (or the
    wildcard "{layer}") and return the path relative to the working directory."""

    dataset: str
    model: str
    root: str = "results"

    def __post_init__(self):
        safe_name(self.dataset, "dataset.id")
        if self.model != "{model}":  # the wildcard of the rules (Run.layout)
            safe_name(self.model, "model.id")

    @property
    def data(self) -> str:
        return f"{self.root}/{self.dataset}"

    @property
    def res(self) -> str:
        return f"{self.root}/{self.dataset}/{self.model}"

    @property
    def manifest(self) -> str:
        return f"{self.data}/manifest.parquet"

    @property
    def rejected(self) -> str:
        return f"{self.data}/rejected.parquet"

    @property
    def dataset_record(self) -> str:
        """What the dataset folder holds (datasets/identity.py), written by the dataset job."""
        return f"{self.data}/dataset.json"

    @property
    def layers_table(self) -> str:
        return f"{self.res}/layers.parquet"

    @property
    def gallery(self) -> str:
        return f"{self.res}/gallery"

    def gallery_layer(self, layer: str) -> str:
        """A layer's folder of the gallery (its page, unit pages and patch images)."""
        return f"{self.gallery}/{layer}"

    @property
    def gallery_report(self) -> str:
        """The whole gallery as one folder, for Snakemake's report (gallery_bundle.py)."""
        return f"{self.res}/gallery-report"

    def gallery_file(self, name: str) -> str:
        """What the gallery's index job writes: index.html, style.css, inputs/, images/."""
        return f"{self.gallery}/{name}"

    @property
    def classes(self) -> str:
        return f"{self.res}/classes.parquet"

    @staticmethod
    def shard_name(shard: int | str) -> str:
        return f"shard-{shard:03d}" if isinstance(shard, int) else f"shard-{shard}"

    def inputs(self, shard: int | str) -> str:
        return f"{self.res}/inputs/{self.shard_name(shard)}.h5"

    def activations(self, layer: str, shard: int | str) -> str:
        return f"{self.res}/activations/{layer}/{self.shard_name(shard)}.h5"

    def part(self, kind: str, layer: str, block: int | str) -> str:
        """A block of shards' partial result of the top-k or ranges pass."""
        block = f"{block:03d}" if isinstance(block, int) else block
        return f"{self.res}/parts/{layer}/{kind}-{block}.h5"

    def per_layer(self, kind: str, layer: str) -> str:
        ext = {"rf": "parquet", "topk": "parquet", "units": "parquet", "bottomk": "parquet",
               "hist": "parquet", "ranges": "parquet", "shown": "json", "patches": "h5",
               "projections": "h5", "verify": "parquet", "grids": "png"}[kind]
        return f"{self.res}/{kind}/{layer}.{ext}"

    def rf(self, layer: str) -> str:
        return self.per_layer("rf", layer)

    def topk(self, layer: str) -> str:
        return self.per_layer("topk", layer)

    def units(self, layer: str) -> str:
        return self.per_layer("units", layer)

    def bottomk(self, layer: str) -> str:
        return self.per_layer("bottomk", layer)

    def hist(self, layer: str) -> str:
        return self.per_layer("hist", layer)

    def ranges(self, layer: str) -> str:
        return self.per_layer("ranges", layer)

    def shown(self, layer: str) -> str:
        return self.per_layer("shown", layer)

    def patches(self, layer: str) -> str:
        return self.per_layer("patches", layer)

    def projections(self, layer: str) -> str:
        return self.per_layer("projections", layer)

    def verify(self, layer: str) -> str:
        return self.per_layer("verify", layer)

    def grid(self, layer: str) -> str:
        return self.per_layer("grids", layer)

    def occlusion(self, layer: str) -> str:
        """A layer's occlusion maps (occlusion.py)."""
        return f"{self.res}/occlusion/{layer}.h5"

    def occlusion_grid(self, layer: str) -> str:
        """A layer's occlusion figure, beside its patch figure."""
        return f"{self.res}/grids/{layer}{OCCLUSION_SUFFIX}.png"

    def occlusion_rows(self, layer: str) -> str:
        """One PNG per occluded example (the gallery's unit pages show them)."""
        return f"{self.res}/grids/{layer}{OCCLUSION_SUFFIX}"

    @property
    def correspondence(self) -> str:
        return f"{self.res}/correspondence.parquet"

    @property
    def filters_table(self) -> str:
        """The first convolution's filters: statistics (filters.py)."""
        return f"{self.res}/filters.parquet"

    @property
    def filters_figure(self) -> str:
        return f"{self.res}/filters.png"

    def invariance(self, layer: str) -> str:
        """A layer's invariance curves' table (invariance.py)."""
        return f"{self.res}/invariance/{layer}.parquet"

    def invariance_figure(self, layer: str) -> str:
        return f"{self.res}/invariance/{layer}.png"

    def compare_table(self, name: str, layer: str) -> str:
        """A comparison's table of one layer (compare.py): beside the models, not in one of them."""
        return f"{self.data}/compare/{name}/{layer}.parquet"

    def compare_figure(self, name: str, layer: str) -> str:
        return f"{self.data}/compare/{name}/{layer}.png"

    def compare_page(self, name: str) -> str:
        return f"{self.data}/compare/{name}/index.html"

    def compare_log(self, name: str, layer: str | None = None) -> str:
        return f"{self.data}/logs/compare/{name}" + (f"-{layer}.log" if layer else ".log")

    def compare_benchmark(self, name: str, layer: str) -> str:
        return f"{self.data}/benchmarks/compare/{name}-{layer}.tsv"

    def unit_grids(self, layer: str) -> str:
        return f"{self.res}/grids/{layer}"

    @staticmethod
    def unit_file(unit: int, ext: str) -> str:
        return f"unit-{unit:04d}.{ext}"

    def unit_grid(self, layer: str, unit: int) -> str:
        return f"{self.unit_grids(layer)}/{self.unit_file(unit, 'png')}"

    def gallery_unit(self, layer: str, unit: int) -> str:
        return f"{self.gallery}/{layer}/{self.unit_file(unit, 'html')}"

    def log(self, stage: str, name: str | None = None) -> str:
        base = self.data if stage in ("dataset", "extract") else self.res
        return f"{base}/logs/{stage}.log" if name is None else f"{base}/logs/{stage}/{name}.log"

    def benchmark(self, stage: str, name: str | None = None) -> str:
        base = self.data if stage == "dataset" else self.res
        return f"{base}/benchmarks/{stage}.tsv" if name is None else f"{base}/benchmarks/{stage}/{name}.tsv"

    @classmethod
    def of(cls, res: str | os.PathLike) -> "Layout":
        """The layout of an existing results/D/M folder."""
        res = os.path.normpath(str(res))
        data, model = os.path.split(res)
        root, dataset = os.path.split(data)
        return cls(dataset, model, root or ".")


@dataclass(frozen=True)
class LayerPlan:
    """One layer's settings (its overrides applied) and what is known of it before any job."""

    name: str
    module: str
    channels: int | None
    k: int
    distinct: str
    units: int | tuple[int, ...]
    pick: str
    seed: int
    patch_max_px: int
    display_px: int
    panels: str
    figure: str
    n_ranges: int
    per_range: int

    @property
    def units_needed(self) -> int:
        return max(self.units) + 1 if isinstance(self.units, tuple) else self.units

    def selection(self) -> dict:
        """What the `shown` job needs to pick the layer's units."""
        return {"units": list(self.units) if isinstance(self.units, tuple) else self.units,
                "pick": self.pick, "seed": self.seed}


@dataclass(frozen=True)
class Plan:
    """The whole run, decided before any job."""

    dataset: dict
    model: ModelConfig
    spec: ModelSpec
    layers: tuple[LayerPlan, ...]
    layout: Layout
    shards: int
    projection: str
    range_projections: bool
    inputs: str
    verify: str  # none, shown or all (verify.py)
    batch_size: int
    device: str
    precision: str
    warnings: tuple[str, ...] = ()
    model_files: tuple[str, ...] = ()
    architecture_files: tuple[str, ...] = ()
    dataset_files: tuple[str, ...] = ()
    dataset_listing: str = ""
    fetches: tuple[Fetch, ...] = ()  # the dataset's downloads, then the model's weights
    archive: str = ""  # the archive the `extract` job unpacks (a download or the user's tar)
    unpacked: str = ""  # where it unpacks to: resources/datasets/<key>
    image_roots: tuple[str, ...] = ()  # what every job that reads images declares (dataset_sources)
    weights_fetch: Fetch | None = None  # a weights URL, downloaded by its own job
    model_key: str = ""
    dataset_identity: dict = dataclasses.field(default_factory=dict)
    occlusion: dict = dataclasses.field(default_factory=dict)  # occlusion.Settings as a dict
    correspondence: dict | None = None  # the correspondence block, its CSV checked (correspondence.py)
    correspondence_files: tuple[str, ...] = ()  # the CSV and every image it names

    @property
    def occluded(self) -> bool:
        return int(self.occlusion.get("examples", 0)) > 0

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def layer(self, name: str) -> LayerPlan:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def shard_ids(self) -> list[str]:
        return [f"{i:03d}" for i in range(self.shards)]

    @property
    def blocks(self) -> list[tuple[int, int]]:
        """[first, end) shards of each block of the tree merge; one block when few shards."""
        return [(b, min(b + FAN_IN, self.shards)) for b in range(0, self.shards, FAN_IN)]

    def panels(self, layer: str) -> str:
        """What the figures of a layer show: patches only when there are no projections."""
        return "patches" if self.projection == "none" else self.layer(layer).panels

    def targets(self) -> list[str]:
        L = self.layout
        return ([L.grid(name) for name in self.layer_names] + [L.layers_table, L.gallery_file("index.html")]
                + [L.gallery_layer(name) for name in self.layer_names]
                + ([L.occlusion_grid(name) for name in self.layer_names] if self.occluded else [])
                + ([L.correspondence] if self.correspondence else [])
                + [L.filters_figure, L.filters_table, L.gallery_report])


def default_dataset_id(cfg: dict) -> str:
    """The results folder name of a dataset when the config gives no `id`."""
    from .datasets.sources import ARCHIVES

    if cfg.get("id"):
        return cfg["id"]
    if cfg["name"] in ARCHIVES:
        return f"{cfg['name']}-{cfg.get('size', 160)}-{cfg.get('split', 'val')}"
    if cfg["name"] == "folder" and cfg.get("path"):
        base = os.path.basename(os.path.normpath(os.path.abspath(cfg["path"])))
        clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("._")
        return clean or "folder"
    return cfg["name"]


def _setting(config: dict, layer: str, key: str):
    return config.get("overrides", {}).get(layer, {}).get(key, config[key])


STORAGE_SCHEMES = ("s3", "gs")


def remote_folder(path: str) -> bool:
    """Whether a folder dataset's path lies in object storage (s3://bucket/prefix, gs://...):
    then no job lists it here; the rules declare it a storage input. Other schemes are refused."""
    m = re.match(r"^(\w+)://", path)
    if not m:
        return False
    if m.group(1) not in STORAGE_SCHEMES:
        raise PlanError(f"config key 'dataset.path': {path!r} has an unsupported scheme; valid: "
                        f"a local folder, {', '.join(s + '://bucket/prefix' for s in STORAGE_SCHEMES)}")
    if not re.match(r"^\w+://[^/]+/?", path):
        raise PlanError(f"config key 'dataset.path': {path!r} names no bucket")
    return True


def _check_dataset(cfg: dict) -> tuple[list[str], int | None, str | None]:
    """Checks of the dataset block the schema cannot make; returns the local files the dataset
    reads (rule inputs), an upper bound of its image count where known, and a note."""
    from .datasets.sources import tar_shard_list

    name = cfg["name"]
    needs = {"folder": "path", "url": "url", "imagenet_val": "tar", "tar_shards": "urls"}.get(name)
    if needs and not cfg.get(needs):
        raise PlanError(f"config key 'dataset.{needs}' is required when dataset.name is {name}")
    files: list[str] = []
    bound = None
    if name == "folder" and remote_folder(cfg["path"]):
        pass  # listed by the dataset job, which gets the folder from the storage plugin
    elif name == "folder":
        path = cfg["path"]
        if not os.path.exists(path):
            raise PlanError(f"config key 'dataset.path': folder {path!r} does not exist")
        if not os.path.isdir(path):
            raise PlanError(f"config key 'dataset.path': {path!r} is a file, not a folder of images")
    if name == "sample":
        from .datasets.sample import photo_files

        files += photo_files()
        bound = SAMPLE_IMAGES
    for key in ("url", "mirror"):
        if cfg.get(key):
            _check_url(cfg[key], f"dataset.{key}")
            if cfg[key].startswith("file://") and key == "url":
                files.append(_file_url_path(cfg[key]))
    if name == "imagenet_val":
        for key in ("tar", "labels"):
            if cfg.get(key):
                if not os.path.isfile(cfg[key]):
                    raise PlanError(f"config key 'dataset.{key}': no file {cfg[key]!r}"
                                    + (" (ILSVRC2012_img_val.tar needs an image-net.org account; "
                                       "download it yourself)" if key == "tar" else ""))
                files.append(cfg[key])
    if name == "tar_shards":
        try:
            shards = tar_shard_list(cfg["urls"])
        except ValueError as e:
            raise PlanError(f"config key 'dataset.urls': {e}") from None
        from .datasets.identity import where_from

        seen: dict[str, str] = {}
        for s in shards:
            where = where_from(_file_url_path(s) if s.startswith("file://") else s)
            if where in seen:
                raise PlanError(f"config key 'dataset.urls': {s!r} and {seen[where]!r} are the "
                                f"same tar; list each tar once")
            seen[where] = s
        for s in shards:
            if URL.match(s):
                _check_url(s, "dataset.urls")
                if s.startswith("file://"):
                    files.append(_file_url_path(s))
            elif re.match(r"^\w+://", s):
                raise PlanError(f"config key 'dataset.urls': {s!r} has an unsupported scheme; "
                                f"valid: http://, https://, file://, or a local path")
            elif not os.path.isfile(s):
                raise PlanError(f"config key 'dataset.urls': no file {s!r}")
            else:
                files.append(s)
    if cfg.get("max_images"):
        bound = min(bound, cfg["max_images"]) if bound else cfg["max_images"]
    return files, bound, None


def _file_url_path(url: str) -> str:
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(url).path)


def _check_url(url: str, key: str) -> None:
    if not URL.match(url):
        raise PlanError(f"config key '{key}': {url!r} has an unsupported scheme; valid: "
                        f"http://, https://, file://")
    if url.startswith("file://") and not os.path.exists(_file_url_path(url)):
        raise PlanError(f"config key '{key}': {url!r} names no file")


def _check_model(m: ModelConfig) -> tuple[ModelSpec, list[str], list[str]]:
    if m.python and m.export:
        raise PlanError("config keys 'model.python' and 'model.export' both name a model; keep one")
    try:
        spec = m.spec()
    except ValueError as e:
        raise PlanError(f"config key 'model': {e}") from None
    files = []
    if spec.kind == "export":
        from .models.export import check_file

        if not os.path.isfile(spec.export):
            raise PlanError(f"config key 'model.export': no file {spec.export!r}")
        try:  # the archive's program and payloads, read as data: nothing is built or run
            check_file(spec.export, m.trust_code)
        except ValueError as e:
            raise PlanError(f"config key 'model.export': {e}") from None
        files.append(spec.export)
    if spec.kind == "python":
        if not m.input_size:
            raise PlanError("config key 'model.input_size' is required for a model.python model")
        found = factory_file(spec)
        if found is None:
            raise PlanError(f"config key 'model.python': cannot find module "
                            f"{spec.factory.rsplit(':', 1)[0]!r} (is it on PYTHONPATH?)")
        files.append(found)
    w = m.weights
    if w == "imagenet" and spec.kind != "export" and not spec.has_published_weights:
        raise PlanError(f"config key 'model.weights': model {spec.name!r} has no published "
                        f"ImageNet weights; give a state_dict path, an http(s)/file URL, or none")
    if re.match(r"^\w+://", w):
        _check_url(w, "model.weights")
    elif w not in ("imagenet", "none") and not os.path.isfile(w):
        raise PlanError(f"config key 'model.weights': {w!r} is not imagenet, none, a URL or an "
                        f"existing state_dict file")
    wf = weights_file(spec, w) if w != "imagenet" or spec.kind == "builtin" else None
    if w.startswith("file://"):
        wf = _file_url_path(w)
    architecture = list(files)  # the export file or the factory's module: what the layer table reads
    if wf:
        files.append(wf)
        if w not in ("imagenet", "none"):  # a state_dict of the user's: does it fit?
            from .models import WeightsMismatch, check_weights_fit

            try:
                check_weights_fit(spec, wf)
            except WeightsMismatch as e:
                raise PlanError(f"config key 'model.weights': {e}") from None
            except ValueError as e:
                key = "model.export" if spec.kind == "export" else "model.python"
                raise PlanError(f"config key '{key}': {e}") from None
    return spec, files, architecture


def _weights_fetch(spec: ModelSpec, weights: str) -> "Fetch | None":
    """The download of a model's weights where they come from an http(s) URL (the config's, or
    the published ImageNet weights of a built-in model), checked against the sha256 prefix its
    file name carries (torch.hub's convention), where it has one."""
    url = weights if re.match(r"^https?://", weights) else None
    if weights == "imagenet" and spec.kind == "builtin" and not spec.packaged_weights:
        url = spec.weights_url
    if not url:
        return None
    fetches: list[Fetch] = []
    _fetch(url, fetches, check="weights")
    return fetches[0]


def _file_identity(path: str, ctime: bool = False) -> list:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns] + ([st.st_ctime_ns] if ctime else [])


# what results/D/ holds beside the models' folders
RESERVED_IDS = ("compare", "logs", "benchmarks", "manifest.parquet", "rejected.parquet", "dataset.json")
ARCHITECTURE_FREE = ("id", "weights", "seed")  # what models sharing one layer table may differ in


@dataclass(frozen=True)
class Fetch:
    """One download, made by its own job (rule `download`) into resources/downloads/<key>/: the
    URL, the file's path, the checksums it must have, and how it is checked ("archive": read to
    its end; "weights": the sha256 prefix in its name, as torch.hub checks it)."""

    url: str
    path: str
    md5: str | None = None
    sha256: str | None = None
    check: str = ""

    @property
    def key(self) -> str:
        return os.path.basename(os.path.dirname(self.path))

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def _fetch(url: str, fetches: list[Fetch], **kw) -> str:
    """The file a job reads for `url`: an http(s) URL's download (added to `fetches`), a file://
    URL's local file."""
    if url.startswith("file://"):
        return _file_url_path(url)
    from .datasets.download import cached_path

    f = Fetch(url, str(cached_path(url, "resources")), **kw)
    if f not in fetches:
        fetches.append(f)
    return f.path


def dataset_sources(data: dict) -> tuple[tuple[Fetch, ...], str, str, tuple[str, ...]]:
    """Where a dataset's images come from, as the workflow's files: its downloads, the archive
    that is unpacked (a download or the user's tar), the folder it is unpacked into
    (resources/datasets/<key>), and the image roots every job that reads images declares (and
    the manifest names its images under): that folder, a folder in object storage, or the tar
    shards; none for the sample photos and a local folder, read in place."""
    from .datasets.download import url_key
    from .datasets.sources import ARCHIVES, FASTAI, tar_shard_list

    name = data["name"]
    fetches: list[Fetch] = []
    archive = unpacked = ""
    roots: list[str] = []
    if name in ARCHIVES:
        filename, md5 = ARCHIVES[name].get(str(data.get("size", 160)), (None, None))
        if filename:
            url = (data.get("mirror") or FASTAI).rstrip("/") + "/" + filename
            archive = _fetch(url, fetches, md5=data.get("md5", md5), sha256=data.get("sha256"),
                             check="archive")
            unpacked = f"resources/datasets/{url_key(url)}"
    elif name == "url":
        archive = _fetch(data["url"], fetches, md5=data.get("md5"), sha256=data.get("sha256"),
                         check="archive")
        unpacked = f"resources/datasets/{url_key(data['url'])}"
    elif name == "imagenet_val":
        archive = data["tar"]
        unpacked = f"resources/datasets/{url_key(os.path.abspath(archive))}"
    elif name == "tar_shards":
        checksums = data.get("checksums") or {}
        for source in tar_shard_list(data["urls"]):
            if "://" in source:
                base = os.path.basename(source.split("?")[0])
                roots.append(_fetch(source, fetches, sha256=checksums.get(base)))
            else:
                roots.append(source)
    elif name == "folder" and remote_folder(data["path"]):
        roots.append(data["path"])
    if unpacked:
        roots = [unpacked]
    return tuple(fetches), archive, unpacked, tuple(roots)


@dataclass(frozen=True)
class DatasetPart:
    """What every model of a run shares: the dataset, its files and shards."""

    data: dict
    files: tuple[str, ...]
    identity: dict
    shards: int
    listing: str
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class Run:
    """The whole run: one Plan per model (in config order, ids unique), the model whose `layers`
    job makes each model's layer table (the first of the models that differ from it only in
    weights), the checkpoint series, the comparisons and the invariance sweeps."""

    plans: dict
    owners: dict
    series: dict = dataclasses.field(default_factory=dict)  # series name -> model ids
    compares: dict = dataclasses.field(default_factory=dict)  # name -> models, layers, units, seed
    invariance: dict | None = None
    warnings: tuple[str, ...] = ()

    @property
    def first(self) -> "Plan":
        return next(iter(self.plans.values()))

    @property
    def ids(self) -> list[str]:
        return list(self.plans)

    @property
    def layout(self) -> "Layout":
        """The paths of every model, with the model as the wildcard "{model}"."""
        return Layout(self.first.layout.dataset, "{model}", self.first.layout.root)

    def table_owners(self) -> list[str]:
        return sorted(set(self.owners.values()))

    def compare_units(self, model: str, layer: str) -> list[dict]:
        """The unit choices ({units, seed}) of the comparisons that show `model`'s `layer`: its
        projections job also projects those units' strongest example."""
        return [{"units": c["units"], "seed": c["seed"]} for c in self.compares.values()
                if model in c["models"] and layer in c["layers"]]

    def targets(self) -> list[str]:
        out = [t for plan in self.plans.values() for t in plan.targets()]
        L = self.first.layout
        for name, c in self.compares.items():
            out += [L.compare_table(name, layer) for layer in c["layers"]]
            out += [L.compare_figure(name, layer) for layer in c["layers"]]
            out.append(L.compare_page(name))
        if self.invariance:
            for model in self.invariance["models"]:
                M = self.plans[model].layout
                out += [f(layer) for layer in self.invariance["layers"]
                        for f in (M.invariance, M.invariance_figure)]
        return out


def build_plan(config: dict, describe_model: bool = True, check_device: bool = True,
               check_results: bool = True) -> "Plan":
    """The plan of the config's first model (its only one, without `models:`); see `build_run`."""
    return build_run(config, describe_model, check_device, check_results).first


def model_blocks(config: dict) -> tuple[list[dict], dict[str, list[str]]]:
    """The config's models as model blocks, each with its `id`, and each checkpoint series' ids:
    `models:` (a list of model blocks and `{series: ...}` items, or one `{series: ...}`) where
    given, else the one `model:` block."""
    models = config.get("models")
    if not models:
        return [dict(config["model"])], {}
    items = [models] if isinstance(models, dict) else list(models)
    blocks, series = [], {}
    for i, item in enumerate(items):
        if "series" not in item:
            blocks.append(dict(item))
            continue
        s = dict(item["series"])
        lists = [k for k, v in s.items() if isinstance(v, list) and k not in ("mean", "std")]
        if len(lists) != 1:
            raise PlanError(f"config key 'models[{i}].series': give exactly one list of values "
                            f"(e.g. epoch: [1, 2, 5]); found {len(lists)} ({', '.join(lists) or 'none'})")
        var = lists[0]
        values = s.pop(var)
        weights = s.get("weights", "")
        if "{" + var + "}" not in weights:
            raise PlanError(f"config key 'models[{i}].series.weights': {weights!r} has no "
                            f"{{{var}}} to put each {var} in (e.g. ckpt/{var}{{{var}}}.pth)")
        if len(set(map(str, values))) != len(values):
            raise PlanError(f"config key 'models[{i}].series.{var}': {values} repeats a value")
        name = s.pop("id", None) or ModelConfig.from_dict(s).folder
        safe_name(name, f"models[{i}].series.id")
        series[name] = []
        for v in values:
            block = {**s, "weights": weights.replace("{" + var + "}", str(v)),
                     "id": f"{name}-{var}{v}"}
            blocks.append(block)
            series[name].append(block["id"])
    return blocks, series


def _dataset_part(config: dict, check_results: bool) -> DatasetPart:
    """The dataset block checked, with its files, identity, shard count and listing."""
    from .datasets.identity import dataset_identity

    warnings: list[str] = []
    data = dict(config["dataset"])
    data["id"] = safe_name(default_dataset_id(data), "dataset.id")
    dataset_files, bound, _ = _check_dataset(data)
    identity = dataset_identity(data)
    if check_results:
        _check_dataset_folder(Layout(data["id"], "_"), identity, "id" in config["dataset"])
    shards = config["shards"]
    listing = ""
    if data["name"] == "tar_shards":
        from .datasets.sources import tar_shard_list

        n_tars = len(tar_shard_list(data["urls"]))
        if shards != 1 and shards != n_tars:
            warnings.append(f"shards: {shards} ignored: a tar_shards dataset has one shard per tar ({n_tars})")
        shards = n_tars
    else:
        if data["name"] == "folder" and not remote_folder(data["path"]):
            from .datasets.index import folder_listing

            try:
                listing, count = folder_listing(data["path"])
            except OSError as e:
                raise PlanError(f"config key 'dataset.path': {e}") from None
            bound = min(bound, count) if bound else count
        if bound is not None and shards > max(bound, 1):
            warnings.append(f"shards: {shards} is more than the {bound} images the dataset can "
                            f"have; using {max(bound, 1)} shard{'s' if bound > 1 else ''}")
            shards = max(bound, 1)
    if not listing and dataset_files:  # tars, archives, label files: a copy keeps no ctime
        listing = hashlib.sha256(json.dumps([_file_identity(f, ctime=True) for f in dataset_files])
                                 .encode()).hexdigest()
    return DatasetPart(data, tuple(dataset_files), identity, shards, listing, tuple(warnings))


def architecture_key(model: "ModelConfig") -> str:
    """What decides a model's layer table: its config less its id, weights and seed."""
    d = {k: v for k, v in model.as_dict().items() if k not in ARCHITECTURE_FREE}
    return json.dumps(d, sort_keys=True)


def build_run(config: dict, describe_model: bool = True, check_device: bool = True,
              check_results: bool = True) -> Run:
    """The run of a config already validated against the schema (defaults filled in): one plan
    per model. `describe_model` builds the model where a layer is given by module path (or the
    model is the user's own) to check layer names, outputs and unit counts before any job (once
    per architecture); `check_device` checks that `device: cuda` has a GPU here (off when jobs
    run elsewhere, e.g. on SLURM); `check_results` refuses a dataset whose results folder (under
    the working directory) holds another dataset."""
    blocks, series = model_blocks(config)
    shared = _dataset_part(config, check_results)
    if config["device"] == "cuda" and check_device:
        import torch

        if not torch.cuda.is_available():
            raise PlanError("config key 'device': cuda asked for but torch sees no GPU here; "
                            "valid: auto, cpu (or cuda on a machine with a GPU)")
    several = bool(config.get("models"))
    plans: dict[str, Plan] = {}
    owners: dict[str, str] = {}
    by_architecture: dict[str, str] = {}
    described: dict[str, tuple] = {}
    for i, block in enumerate(blocks):
        try:
            plan = _model_plan(config, block, shared, described, describe_model)
        except PlanError as e:
            if not several:
                raise
            raise PlanError(f"models[{i}] ({block.get('id') or block.get('name', '')}): {e}") from None
        mid = plan.layout.model
        if mid in plans:
            raise PlanError(f"config key 'models': two models have the id {mid!r}; give each its "
                            f"own id")
        if mid in RESERVED_IDS:
            raise PlanError(f"config key 'model.id': {mid!r} cannot be a model id (results/"
                            f"{plan.layout.dataset}/{mid} is the dataset's or the comparisons'); "
                            f"valid: any name but {', '.join(RESERVED_IDS)}")
        plans[mid] = plan
        owners[mid] = by_architecture.setdefault(architecture_key(plan.model), mid)
    run = Run(plans=plans, owners=owners, series=series, warnings=shared.warnings)
    compares = _check_compares(config.get("compare") or {}, run)
    invariance = _check_invariance(config.get("invariance") or None, run)
    return dataclasses.replace(run, compares=compares, invariance=invariance)


def _model_plan(config: dict, block: dict, shared: DatasetPart, described: dict,
                describe_model: bool) -> "Plan":
    """One model's plan: its model checked, its layers resolved (the model built once per
    architecture where needed), each layer's settings."""
    data = shared.data
    model = ModelConfig.from_dict({"seed": config["seed"], **block})
    spec, model_files, architecture_files = _check_model(model)
    sources = dataset_sources(data)
    weights = _weights_fetch(spec, model.weights)
    layout = Layout(data["id"], safe_name(model.id or spec.name, "model.id"))
    layers = list(config["layers"])
    for layer in layers:
        safe_name(layer, "layers")
        if layer in GALLERY_NAMES:
            raise PlanError(f"config key 'layers': {layer!r} is a name the gallery keeps for itself "
                            f"({', '.join(GALLERY_NAMES)}); name the layer by its module path")
    for layer in layers:
        if layer.endswith(OCCLUSION_SUFFIX) and layer[:-len(OCCLUSION_SUFFIX)] in layers:
            raise PlanError(f"config key 'layers': {layer!r} would share its figure's name with the "
                            f"occlusion figure of {layer[:-len(OCCLUSION_SUFFIX)]!r} "
                            f"(grids/{layer}.png); name one of them by another alias or module path")
    stray = sorted(set(config.get("layouts", {})) - set(layers))
    if stray:
        raise PlanError(f"config key 'layouts' names layers that are not in 'layers': "
                        f"{', '.join(stray)}; configured layers: {', '.join(layers)}")
    unknown = sorted(set(config.get("overrides", {})) - set(layers))
    if unknown:
        raise PlanError(f"config key 'overrides' names layers that are not in 'layers': "
                        f"{', '.join(unknown)}; configured layers: {', '.join(layers)}")
    try:
        projection = projection_method(spec, config["projection"])
    except ValueError as e:
        raise PlanError(f"config key 'projection': {e}") from None

    modules = {layer: spec.aliases.get(layer) for layer in layers}
    channels = {layer: spec.channels.get(layer) for layer in layers}
    needs_model = spec.kind != "builtin" or any(m is None for m in modules.values())
    views = {}
    if needs_model and describe_model:
        key = architecture_key(model)
        if key not in described:
            described[key] = _describe(
                spec, model, layers, projection, config["projection"], config.get("layouts", {}),
                config.get("tokens", "patch"))
        modules, channels, spec, views, projection = described[key]
        if spec.input_size != (model.input_size or spec.input_size) or (
                spec.kind == "export" and not model.input_size):
            model = dataclasses.replace(model, input_size=spec.input_size, resize_size=spec.resize_size)
        if views:
            model = dataclasses.replace(model, views=views)
    elif needs_model:
        modules = {layer: m or layer for layer, m in modules.items()}

    plans = []
    for layer in layers:
        s = {key: _setting(config, layer, key) for key in PER_LAYER_KEYS}
        units = tuple(s["units"]) if isinstance(s["units"], list) else s["units"]
        lp = LayerPlan(name=layer, module=modules[layer], channels=channels[layer],
                       **{**s, "units": units})
        if lp.channels is not None and lp.units_needed > lp.channels:
            key = f"overrides.{layer}.units" if "units" in config.get("overrides", {}).get(layer, {}) else "units"
            raise PlanError(f"config key '{key}': {lp.units_needed} units asked for but {layer} "
                            f"has {lp.channels} channels (units 0..{lp.channels - 1})")
        plans.append(lp)

    occlusion = _check_occlusion(config.get("occlusion") or {}, model.input_size or spec.input_size)
    correspondence, correspondence_files = None, ()
    if config.get("correspondence"):
        correspondence, correspondence_files = _check_correspondence(config["correspondence"], layers)
    key_source = {"model": model.as_dict(), "files": [_file_identity(f) for f in model_files]}
    model_key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:16]
    return Plan(dataset=data, model=model, spec=spec, layers=tuple(plans), layout=layout,
                shards=shared.shards, projection=projection, inputs=config["inputs"],
                range_projections=config["range_projections"],
                verify={False: "none", True: "shown"}.get(config["verify"], config["verify"]),
                batch_size=config["batch_size"], device=config["device"],
                precision=config["precision"], warnings=shared.warnings,
                model_files=tuple(model_files), architecture_files=tuple(architecture_files),
                dataset_files=shared.files,
                fetches=sources[0] + ((weights,) if weights else ()), archive=sources[1],
                unpacked=sources[2], image_roots=sources[3], weights_fetch=weights,
                dataset_listing=shared.listing, model_key=model_key, dataset_identity=shared.identity,
                occlusion=occlusion, correspondence=correspondence,
                correspondence_files=tuple(correspondence_files))


def _check_occlusion(cfg: dict, input_size: int) -> dict:
    """The occlusion block with its defaults; a square larger than the input, or a stride that
    leaves pixels uncovered, is refused by name."""
    from .occlusion_file import Settings

    s = dataclasses.asdict(Settings.from_dict(cfg))
    size, stride = s["size"], s["stride"]
    if size != "auto" and int(size) > input_size:
        raise PlanError(f"config key 'occlusion.size': {size} px is larger than the "
                        f"{input_size}-px input; valid: auto or 1..{input_size}")
    if size != "auto" and stride != "auto" and int(stride) > int(size):
        raise PlanError(f"config key 'occlusion.stride': {stride} px is more than the {size}-px "
                        f"square, so some pixels would never be covered; valid: auto or 1..{size}")
    if stride != "auto" and int(stride) > input_size:
        raise PlanError(f"config key 'occlusion.stride': {stride} px is larger than the "
                        f"{input_size}-px input; valid: auto or 1..{input_size}")
    if s["fill"] != "mean":
        s["fill"] = [float(v) for v in s["fill"]]
    return s


def _check_correspondence(cfg: dict, layers: list[str]) -> tuple[dict, list[str]]:
    """The correspondence block with its CSV read and checked (correspondence.read_parts); returns
    it with the layers filled in, and the files the stage reads (the CSV, every image)."""
    from .correspondence import read_parts

    out = {"layers": list(layers), "draws": 10, "seed": 0, **cfg}
    unknown = [layer for layer in out["layers"] if layer not in layers]
    if unknown:
        raise PlanError(f"config key 'correspondence.layers': {', '.join(unknown)} not in 'layers'; "
                        f"configured layers: {', '.join(layers)}")
    try:
        parts = read_parts(out["images"])
    except (OSError, ValueError) as e:
        raise PlanError(f"config key 'correspondence.images': {e}") from None
    return out, [out["images"]] + sorted(set(parts["path"]))


def _check_compares(cfg: dict | list, run: Run) -> dict[str, dict]:
    """The comparisons (`compare:`, one block or a list), each with its models (ids, or a series
    name), layers, units and seed filled in, by name. Unit identity is the channel index, so a
    layer whose channel count differs between the models is refused by name."""
    blocks = [cfg] if isinstance(cfg, dict) else list(cfg)
    out: dict[str, dict] = {}
    layers = run.first.layer_names
    for i, block in enumerate(b for b in blocks if b):
        key = "compare" if isinstance(cfg, dict) else f"compare[{i}]"
        models = block.get("models", run.ids)
        if isinstance(models, str):
            if models not in run.series:
                raise PlanError(f"config key '{key}.models': {models!r} is not a series; series: "
                                f"{', '.join(run.series) or 'none (models: {series: ...} makes one)'}"
                                f", or give a list of model ids ({', '.join(run.ids)})")
            name, models = block.get("name", models), run.series[models]
        else:
            name = block.get("name", "models")
            bad = [m for m in models if m not in run.plans]
            if bad:
                raise PlanError(f"config key '{key}.models': {', '.join(map(repr, bad))} not a model "
                                f"of this run; valid: {', '.join(run.ids)}")
        safe_name(name, f"{key}.name")
        if name in out:
            raise PlanError(f"config key '{key}.name': two comparisons are named {name!r}")
        if len(models) < 2:
            raise PlanError(f"config key '{key}.models': a comparison needs two models or more, "
                            f"got {len(models)} ({', '.join(models) or 'none'}); models: {', '.join(run.ids)}")
        chosen = block.get("layers", layers)
        unknown = [layer for layer in chosen if layer not in layers]
        if unknown:
            raise PlanError(f"config key '{key}.layers': {', '.join(unknown)} not in 'layers'; "
                            f"configured layers: {', '.join(layers)}")
        units = block.get("units", 9)
        for layer in chosen:
            counts = {m: run.plans[m].layer(layer).channels for m in models}
            known = {m: c for m, c in counts.items() if c is not None}
            if len(set(known.values())) > 1:
                what = ", ".join(f"{c} in {m}" for m, c in known.items())
                raise PlanError(f"config key '{key}.models': layer {layer} has {what} channels; a unit "
                                f"is a channel index, meaningful within one training run or a "
                                f"fine-tune: compare models of one architecture")
            n = next(iter(known.values()), None)
            if n is not None and isinstance(units, list) and max(units) >= n:
                raise PlanError(f"config key '{key}.units': unit {max(units)} asked for but {layer} "
                                f"has {n} channels (units 0..{n - 1})")
        out[name] = {"models": list(models), "layers": list(chosen), "units": units,
                     "seed": block.get("seed", 0)}
    return out


INVARIANCE_DEFAULTS = {
    "images": "top",
    "translation": [-60, -45, -30, -15, 0, 15, 30, 45, 60],  # vertical, network-input pixels
    "scale": [0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8],
    "rotation": list(range(0, 361, 30)),
}


def _check_invariance(cfg: dict | None, run: Run) -> dict | None:
    """The invariance block with its defaults (every layer, every model), or None when off."""
    if cfg is None or cfg.get("enabled") is False:
        return None
    layers = run.first.layer_names
    out = {**INVARIANCE_DEFAULTS, "layers": layers, "models": run.ids,
           **{k: v for k, v in cfg.items() if k != "enabled"}}
    for key, valid in (("layers", layers), ("models", run.ids)):
        bad = [v for v in out[key] if v not in valid]
        if bad:
            raise PlanError(f"config key 'invariance.{key}': {', '.join(map(str, bad))} not "
                            f"configured; valid: {', '.join(valid)}")
    for key, identity in (("translation", 0), ("scale", 1), ("rotation", 0)):
        if identity not in out[key]:  # the curves start from the untransformed image
            out[key] = sorted(out[key] + [identity])
    return out


def _check_dataset_folder(layout: Layout, identity: dict, id_given: bool) -> None:
    """Refuse a dataset whose results folder records another one (two datasets, one id)."""
    from .datasets.identity import describe, recorded_identity

    recorded = recorded_identity(layout.dataset_record)
    if recorded is None or recorded == identity:
        return
    how = "" if id_given else " (the default id: the folder's or source's name)"
    raise PlanError(f"config key 'dataset.id': {layout.data} holds dataset {describe(recorded)}, "
                    f"not {describe(identity)}{how}; give this dataset its own dataset.id, or "
                    f"remove {layout.data}")


def _layer_views(net, modules: dict[str, str], size: int, layouts: dict[str, str],
                 tokens: str) -> tuple[dict, set[str], dict[str, int]]:
    """Each layer's view (layer -> LayerView.as_dict(), for the layers that are not plain
    N×C×H×W or whose layout the config names), the layers that attention reaches (their
    projection is the plain gradient) and each layer's channels, from one traced forward pass.
    A layout the fields cannot tell is refused by name."""
    from .receptive_field import Traced, find_view, trace_tensors

    traced, shapes = trace_tensors(net, modules, (size, size))
    views, attended = {}, set()
    channels = {layer: int(shape[0]) for layer, shape in shapes.items()}
    for layer, f in traced.items():
        if not isinstance(f, Traced):
            if len(shapes[layer]) != 3 and layer not in layouts:
                raise ValueError(f"layer {layer}: the walk cannot follow it ({f.reason}) and its "
                                 f"output {tuple(shapes[layer])} is not C×H×W; name its layout "
                                 f"(layouts: {{{layer}: nhwc or tokens}}) or choose another layer")
            continue  # an N×C×H×W map the layer table probes
        cell = f.kind("cell").planes
        view = find_view(layer, cell, (1, *shapes[layer]), layouts.get(layer))
        try:
            view = view.reading(layer, tokens)
        except ValueError as e:
            raise PlanError(f"config key 'tokens': {e}") from None
        if view.layout != "nchw" or layer in layouts:
            views[layer] = view.as_dict()
        channels[layer] = int(view.hw(shapes[layer])[0])
        if view.layout == "tokens" or not np.array_equal(
                *np.broadcast_arrays(cell[:4], f.kind("local").planes[:4])):
            attended.add(layer)
    return views, attended, channels


def _projection_behind_attention(setting: str, projection: str, views: dict,
                                 attended: set[str]) -> str:
    """Behind attention there is no ReLU rule that defines guided backpropagation or the
    deconvnet: auto takes the plain input gradient there, an explicit choice is refused."""
    if not attended:
        return projection
    layer = sorted(attended)[0]
    tokens = views.get(layer, {}).get("layout") == "tokens"
    what = "a token layer" if tokens else "reached by attention"
    if setting == "auto":
        return "gradient"
    if projection in ("deconvnet", "guided_backprop"):
        raise PlanError(f"config key 'projection': {projection} is defined for ReLU networks, "
                        f"not through attention (layer {layer} is {what}); valid here: auto "
                        f"(= gradient, the plain input gradient), gradient, none")
    return projection


def _describe(spec: ModelSpec, model_cfg: ModelConfig, layers: list[str], projection: str,
              setting: str, layouts: dict[str, str], tokens: str):
    """Build the model once (random weights) to resolve module paths, check that each layer's
    module makes one feature map or token sequence, count its channels, read each layer's view
    (layout, tokens), choose the projection for layers behind attention, and for a model of the
    user's own check that the deconvnet can invert it when asked for."""
    from .hooks import LayerOutputError
    from .models import build_model, fit_to_program, resolve_layers

    try:
        net = build_model(spec, weights=None, seed=model_cfg.seed)
    except (ValueError, OSError) as e:
        key = "model.export" if spec.kind == "export" else "model.python"
        raise PlanError(f"config key '{key}': {e}") from None
    try:
        spec = fit_to_program(spec, net, model_cfg.input_size, model_cfg.resize_size)
    except ValueError as e:
        raise PlanError(f"config key '{'model.input_size' if model_cfg.input_size else 'model.export'}'"
                        f": {e}") from None
    try:
        modules = resolve_layers(spec, layers, model=net)
        views, attended, channels = _layer_views(net, modules, spec.input_size, layouts, tokens)
    except (LayerOutputError, ValueError) as e:
        raise PlanError(f"config key 'layers': {e}") from None
    except RuntimeError as e:
        raise PlanError(f"config key 'model': the model fails on a {spec.input_size}×"
                        f"{spec.input_size} input: {str(e).splitlines()[0]}") from None
    projection = _projection_behind_attention(setting, projection, views, attended)
    if projection == "deconvnet" and spec.kind != "builtin":
        from .projections import deconvnet_refusal

        reason = deconvnet_refusal(net, modules, spec.input_size)
        if reason:
            raise PlanError(f"config key 'projection': {reason}")
    return modules, {layer: channels[layer] for layer in layers}, spec, views, projection
