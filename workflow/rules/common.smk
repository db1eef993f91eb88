# The config becomes the plan (unitscope/plan.py): every check the schema cannot make happens
# there, before any job; the rules below only read paths and settings from it.
import re
import sys

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)  # the package beside the Snakefile, even when not installed

from unitscope.fingerprint import stage_fingerprint
from unitscope.plan import PlanError, build_plan
from unitscope.summary import run_summary


validate(config, "../schemas/config.schema.yaml")
try:
    PLAN = build_plan(
        config,
        # a job on a cluster node re-reads this file: the main process has checked it all already
        describe_model=not workflow.remote_exec,
        check_device=workflow.local_exec and not workflow.remote_exec,
    )
except PlanError as e:
    raise WorkflowError(str(e)) from None
for _warning in PLAN.warnings:
    logger.warning(f"unitscope: {_warning}")

L = PLAN.layout
LAYERS = PLAN.layer_names
SHARDS = PLAN.shard_ids
MODEL = PLAN.model.as_dict()


wildcard_constraints:
    layer="|".join(re.escape(name) for name in LAYERS),
    shard=r"\d\d\d+",
    block=r"\d\d\d+",


def setting(key):
    """An input function giving a layer's value of a per-layer setting."""

    def value(wildcards):
        return getattr(PLAN.layer(wildcards.layer), key)

    return value


def layer_name(wildcards):
    return wildcards.layer


def layer_panels(wildcards):
    """What a layer's figures show: patches, projections or both."""
    return PLAN.panels(wildcards.layer)


def layer_selection(wildcards):
    """How the `shown` job picks a layer's units."""
    return PLAN.layer(wildcards.layer).selection()


def shard_index(wildcards):
    return int(wildcards.shard)


def stored_inputs(wildcards=None):
    """The inputs-store shards (inputs: store), none when images are streamed."""
    return [L.inputs(s) for s in SHARDS] if PLAN.inputs == "store" else []


def shard_inputs(wildcards):
    """What the activations job of a shard reads besides the manifest."""
    return {"inputs": L.inputs(wildcards.shard)} if PLAN.inputs == "store" else {}


def layer_activations(wildcards):
    return [L.activations(wildcards.layer, s) for s in SHARDS]


def block_of(wildcards) -> tuple[int, int]:
    return PLAN.blocks[int(wildcards.block)]


def block_activations(wildcards):
    """The activation shards of one block of the tree merge."""
    first, end = block_of(wildcards)
    return [L.activations(wildcards.layer, s) for s in SHARDS[first:end]]


def block_first(wildcards):
    return block_of(wildcards)[0]


def pass_sources(kind):
    """What a layer's top-k or ranges pass reads: its shards, or with many shards the partial
    results of blocks of them."""

    def sources(wildcards):
        if len(PLAN.blocks) == 1:
            return {"activations": layer_activations(wildcards)}
        return {"parts": [L.part(kind, wildcards.layer, b) for b in range(len(PLAN.blocks))]}

    return sources


def figure_inputs(wildcards):
    """A layer figure's inputs: its patches, and projections and verification where they run."""
    layer = wildcards.layer
    files = {"patches": L.patches(layer), "units": L.units(layer), "shown": L.shown(layer),
             "table": L.layers_table, "manifest": L.manifest}
    if PLAN.panels(layer) != "patches":
        files["projections"] = L.projections(layer)
    if PLAN.verify != "none":
        files["verify"] = L.verify(layer)
    if PLAN.occluded:  # the occlusion figure shows the images, read as every stage reads them
        files["occlusion"] = L.occlusion(layer)
        files["inputs"] = stored_inputs()
    return files


def figure_facts(wildcards):
    return {"model": L.model, "dataset": L.dataset,
            "method": PLAN.projection if PLAN.panels(wildcards.layer) != "patches" else ""}


def report_labels(wildcards):
    """The report's labels of a layer figure, read when the report is made."""
    import pandas as pd

    row = pd.read_parquet(L.layers_table).set_index("layer").loc[wildcards.layer]
    lp = PLAN.layer(wildcards.layer)
    rf = f"{row.rf_size}x{row.rf_size_x} px" if row.rf_affine else f"up to {row.rf_max_h}x{row.rf_max_w} px"
    units = lp.units if isinstance(lp.units, int) else ",".join(map(str, lp.units))
    return {"layer": wildcards.layer, "RF": rf, "units": f"{units} ({lp.pick})", "k": str(lp.k)}


def occlusion_labels(wildcards):
    """The report's labels of an occlusion figure."""
    o = PLAN.occlusion
    return {"layer": wildcards.layer, "examples": str(o["examples"]),
            "square": f"{o['size']} px, stride {o['stride']}"}


def correspondence_table(wildcards):
    """The part correspondence table the gallery's index shows, where it is configured."""
    return {"correspondence": L.correspondence} if PLAN.correspondence else {}


def projected_ranges(wildcards):
    """The range examples a layer's projections also project (range_projections: true)."""
    return {"ranges": L.ranges(wildcards.layer)} if PLAN.range_projections else {}


def layer_gallery_files(wildcards):
    """The files one layer's gallery pages read (gallery.LayerFiles), also the job's inputs."""
    layer = wildcards.layer
    f = {"topk": L.topk(layer), "units": L.units(layer), "shown": L.shown(layer),
         "patches": L.patches(layer), "rf": L.rf(layer), "bottomk": L.bottomk(layer),
         "hist": L.hist(layer), "ranges": L.ranges(layer)}
    if PLAN.panels(layer) != "patches":
        f["projections"] = L.projections(layer)
    if PLAN.verify != "none":
        f["verify"] = L.verify(layer)
    if PLAN.occluded:
        f["occlusion"] = L.occlusion(layer)
        f["occlusion_rows"] = L.occlusion_rows(layer)
    return f


def layer_gallery_inputs(wildcards):
    return list(layer_gallery_files(wildcards).values())


def index_files():
    """What the gallery's index job reads of each layer: the examples' tables (which images the
    pages show), verification (effective fields), and units, boxes and activations (the image
    pages)."""
    files = {}
    for layer in LAYERS:
        f = {"topk": L.topk(layer), "units": L.units(layer), "shown": L.shown(layer),
             "patches": L.patches(layer), "rf": L.rf(layer), "bottomk": L.bottomk(layer),
             "ranges": L.ranges(layer), "activations": [L.activations(layer, s) for s in SHARDS]}
        if PLAN.verify != "none":
            f["verify"] = L.verify(layer)
        files[layer] = f
    return files


def index_inputs(wildcards):
    """Every file of `index_files`, as the index job's inputs (none missed, none extra)."""
    keep = ("topk", "units", "rf", "bottomk", "ranges", "activations", "verify")
    paths = []
    for f in index_files().values():
        for key, value in f.items():
            if key in keep:
                paths += value if isinstance(value, list) else [value]
    return paths


onsuccess:
    print(run_summary(PLAN), file=sys.stderr)
