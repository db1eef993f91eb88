# The config becomes the run (unitscope/plan.py): one plan per model, every check the schema cannot
# make done there, before any job; the rules below only read paths and settings from it. Every
# path of a model's results has the wildcard {model}; the dataset's and the comparisons' have not.
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)  # the package beside the Snakefile, even when not installed

from unitscope.fingerprint import stage_fingerprint
from unitscope.plan import ARCHITECTURE_FREE, Layout, PlanError, build_run
from unitscope.summary import run_summary


validate(config, "../schemas/config.schema.yaml")
try:
    RUN = build_run(
        config,
        # a job on a cluster node re-reads this file: the main process has checked it all already
        describe_model=not workflow.remote_exec,
        check_device=workflow.local_exec and not workflow.remote_exec,
    )
except PlanError as e:
    raise WorkflowError(str(e)) from None
for _warning in RUN.warnings:
    logger.warning(f"unitscope: {_warning}")

PLANS = RUN.plans
PLAN = RUN.first  # what every model shares: the dataset, the shards, the per-layer settings
L = RUN.layout  # the paths, {model} a wildcard
LAYERS = PLAN.layer_names
SHARDS = PLAN.shard_ids


def one_of(names) -> str:
    """A wildcard's regular expression: exactly one of `names` (nothing when there are none)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


wildcard_constraints:
    model=one_of(RUN.ids),
    layer=one_of(LAYERS),
    shard=r"\d\d\d+",
    block=r"\d\d\d+",
    compare=one_of(RUN.compares),


def of_model(attr):
    """An input or param function giving a value of the job's model's plan."""

    def value(wildcards):
        return getattr(PLANS[wildcards.model], attr)

    return value


def installed(paths):
    """Files from outside results/ that every machine of the run has where the config names them
    (the photos and weights inside installed packages, the user's model and weights files):
    inputs that are read in place, never through a storage plugin (--default-storage-provider)."""
    return [local(path) for path in paths]


def model_files(attr="model_files"):
    """The files a model is read from, as inputs (rerun when they change, read in place)."""

    def files(wildcards):
        return installed(getattr(PLANS[wildcards.model], attr))

    return files


def image_root(root: str):
    """An image root as an input: a folder in object storage through its storage plugin, a
    download or an unpacked archive as the output of its job, a user's tar in place."""
    if re.match(r"^\w+://", root):
        return storage(root)
    return root if root.startswith("resources/") else local(root)


def image_folder(wildcards=None):
    """The dataset's image roots (plan.dataset_sources), as inputs of every job that reads its
    images: the manifest names images under these roots, and each job reads its own copies."""
    return {"image_folder": [image_root(r) for r in PLAN.image_roots]} if PLAN.image_roots else {}


# every download of the run, by its folder's key: the dataset's archive or tar shards, weights
FETCHES = {f.key: f for plan in PLANS.values() for f in plan.fetches}


def fetch_setting(key):
    def value(wildcards):
        return getattr(FETCHES[wildcards.key], key)

    return value


def weights_download(wildcards):
    """A model's weights where they come from a URL: the file its `download` job fetched."""
    f = PLANS[wildcards.model].weights_fetch
    return {"weights_file": f.path} if f else {}


def model_config(wildcards):
    """The job's model block (plain values) as the stages take it."""
    return PLANS[wildcards.model].model.as_dict()


def architecture(wildcards):
    """What the layer table depends on: the model block less its id, weights and seed (models
    that differ only in those share one table)."""
    return {k: v for k, v in model_config(wildcards).items() if k not in ARCHITECTURE_FREE}


def layout_of(model: str) -> Layout:
    return PLANS[model].layout


def table_source(wildcards):
    """The layer table (and fields) a model shares with the model whose job computed it."""
    S = layout_of(RUN.owners[wildcards.model])
    return {"source_table": S.layers_table, "source_rf": [S.rf(layer) for layer in LAYERS]}


def setting(key):
    """An input function giving a layer's value of a per-layer setting."""

    def value(wildcards):
        return getattr(PLAN.layer(wildcards.layer), key)

    return value


def layer_name(wildcards):
    return wildcards.layer


def layer_panels(wildcards):
    """What a layer's figures show: patches, projections or both."""
    return PLANS[wildcards.model].panels(wildcards.layer)


def layer_selection(wildcards):
    """How the `shown` job picks a layer's units."""
    return PLAN.layer(wildcards.layer).selection()


def shard_index(wildcards):
    return int(wildcards.shard)


def stored_inputs(wildcards):
    """The inputs-store shards (inputs: store), none when images are streamed."""
    L = layout_of(wildcards.model)
    return [L.inputs(s) for s in SHARDS] if PLAN.inputs == "store" else []


def shard_inputs(wildcards):
    """What the activations job of a shard reads besides the manifest."""
    L = layout_of(wildcards.model)
    return {"inputs": L.inputs(wildcards.shard)} if PLAN.inputs == "store" else {}


def layer_activations(wildcards):
    L = layout_of(wildcards.model)
    return [L.activations(wildcards.layer, s) for s in SHARDS]


def block_of(wildcards) -> tuple[int, int]:
    return PLAN.blocks[int(wildcards.block)]


def block_activations(wildcards):
    """The activation shards of one block of the tree merge."""
    L = layout_of(wildcards.model)
    first, end = block_of(wildcards)
    return [L.activations(wildcards.layer, s) for s in SHARDS[first:end]]


def block_first(wildcards):
    return block_of(wildcards)[0]


def pass_sources(kind):
    """What a layer's top-k or ranges pass reads: its shards, or with many shards the partial
    results of blocks of them."""

    def sources(wildcards):
        L = layout_of(wildcards.model)
        if len(PLAN.blocks) == 1:
            return {"activations": layer_activations(wildcards)}
        return {"parts": [L.part(kind, wildcards.layer, b) for b in range(len(PLAN.blocks))]}

    return sources


def figure_inputs(wildcards):
    """A layer figure's inputs: its patches, and projections and verification where they run."""
    L = layout_of(wildcards.model)
    layer = wildcards.layer
    files = {"patches": L.patches(layer), "units": L.units(layer), "shown": L.shown(layer),
             "table": L.layers_table, "manifest": L.manifest, **image_folder()}
    if PLANS[wildcards.model].panels(layer) != "patches":
        files["projections"] = L.projections(layer)
    if PLAN.verify != "none":
        files["verify"] = L.verify(layer)
    if PLAN.occluded:  # the occlusion figure shows the images, read as every stage reads them
        files["occlusion"] = L.occlusion(layer)
        files["inputs"] = stored_inputs(wildcards)
    return files


def figure_facts(wildcards):
    plan = PLANS[wildcards.model]
    return {"model": wildcards.model, "dataset": L.dataset,
            "method": plan.projection if plan.panels(wildcards.layer) != "patches" else ""}


def projection_method(wildcards):
    return PLANS[wildcards.model].projection


def compared_units(wildcards):
    """The units of the comparisons that show this model's layer: its projections job projects
    their strongest example too."""
    return RUN.compare_units(wildcards.model, wildcards.layer)


def report_labels(wildcards):
    """The report's labels of a layer figure, read when the report is made."""
    import pandas as pd

    row = pd.read_parquet(layout_of(wildcards.model).layers_table).set_index("layer").loc[wildcards.layer]
    lp = PLAN.layer(wildcards.layer)
    rf = f"{row.rf_size}x{row.rf_size_x} px" if row.rf_affine else f"up to {row.rf_max_h}x{row.rf_max_w} px"
    units = lp.units if isinstance(lp.units, int) else ",".join(map(str, lp.units))
    return {"model": wildcards.model, "layer": wildcards.layer, "RF": rf,
            "units": f"{units} ({lp.pick})", "k": str(lp.k)}


def occlusion_labels(wildcards):
    """The report's labels of an occlusion figure."""
    o = PLAN.occlusion
    return {"model": wildcards.model, "layer": wildcards.layer, "examples": str(o["examples"]),
            "square": f"{o['size']} px, stride {o['stride']}"}


def correspondence_table(wildcards):
    """The part correspondence table the gallery's index shows, where it is configured."""
    L = layout_of(wildcards.model)
    return {"correspondence": L.correspondence} if PLAN.correspondence else {}


def projected_ranges(wildcards):
    """The range examples a layer's projections also project (range_projections: true)."""
    L = layout_of(wildcards.model)
    return {"ranges": L.ranges(wildcards.layer)} if PLAN.range_projections else {}


def layer_gallery_files(wildcards):
    """The files one layer's gallery pages read (gallery.LayerFiles), also the job's inputs."""
    L = layout_of(wildcards.model)
    layer = wildcards.layer
    f = {"topk": L.topk(layer), "units": L.units(layer), "shown": L.shown(layer),
         "patches": L.patches(layer), "rf": L.rf(layer), "bottomk": L.bottomk(layer),
         "hist": L.hist(layer), "ranges": L.ranges(layer)}
    if PLANS[wildcards.model].panels(layer) != "patches":
        f["projections"] = L.projections(layer)
    if PLAN.verify != "none":
        f["verify"] = L.verify(layer)
    if PLAN.occluded:
        f["occlusion"] = L.occlusion(layer)
        f["occlusion_rows"] = L.occlusion_rows(layer)
    return f


GALLERY_KINDS = ("topk", "units", "rf", "bottomk", "ranges")


def index_files(wildcards):
    """What the gallery's index job reads of each layer, one named input per kind with one path
    per layer (in LAYERS' order; `activations`: per layer its shards): the examples' tables
    (which images the pages show), verification (effective fields), and units, boxes and
    activations (the image pages)."""
    L = layout_of(wildcards.model)
    files = {kind: [getattr(L, kind)(layer) for layer in LAYERS] for kind in GALLERY_KINDS}
    files["activations"] = [L.activations(layer, s) for layer in LAYERS for s in SHARDS]
    if PLAN.verify != "none":
        files["verify"] = [L.verify(layer) for layer in LAYERS]
    return files


def gallery_title(wildcards):
    return f"{wildcards.model} on {L.dataset}"


def gallery_links(wildcards):
    """What the gallery's index links to beside its layers: the first layer's filters, and the
    comparisons this model takes part in."""
    return {"filters": "../filters.png",
            "compare": {name: f"../../compare/{name}/index.html"
                        for name, c in RUN.compares.items() if wildcards.model in c["models"]}}


def compare_inputs(wildcards):
    """What a comparison of one layer reads of its models, in the comparison's order: each one's
    top-k table and patches, and the projections of those that project."""
    models = RUN.compares[wildcards.compare]["models"]
    return {"topk": [layout_of(m).topk(wildcards.layer) for m in models],
            "patches": [layout_of(m).patches(wildcards.layer) for m in models],
            "projections": [layout_of(m).projections(wildcards.layer) for m in models
                            if PLANS[m].projection != "none"]}


def compare_projected(wildcards):
    """Which of a comparison's models have projections (the `projections` input lists those)."""
    return [PLANS[m].projection != "none" for m in RUN.compares[wildcards.compare]["models"]]


def compare_choice(wildcards):
    """The units a comparison shows: {units: N or [ids], seed}."""
    c = RUN.compares[wildcards.compare]
    return {"units": c["units"], "seed": c["seed"]}


def compare_setting(key):
    def value(wildcards):
        return RUN.compares[wildcards.compare][key]

    return value


def compare_page_inputs(wildcards):
    c = RUN.compares[wildcards.compare]
    return {"tables": [L.compare_table(wildcards.compare, layer) for layer in c["layers"]],
            "figures": [L.compare_figure(wildcards.compare, layer) for layer in c["layers"]]}


onsuccess:
    print(run_summary(RUN), file=sys.stderr)
