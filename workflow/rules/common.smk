import json
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The package sits beside the Snakefile; make it importable even when not pip-installed, and let
# job shells find the same Python as Snakemake itself (a conda env's python wins under --sdm conda).
sys.path.insert(0, workflow.basedir)
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

from unitscope.datasets.sources import default_id
from unitscope.fingerprint import stage_fingerprint
from unitscope.models import build_model, check_units, get_spec, projection_method, resolve_layers


validate(config, "../schemas/config.schema.yaml")

DATASET = default_id(config["dataset"])
if config["model"].get("python") and config["model"].get("torchscript"):
    raise WorkflowError("config keys 'model.python' and 'model.torchscript' both name a model; "
                        "keep one")
if config["model"].get("torchscript") and not os.path.isfile(config["model"]["torchscript"]):
    raise WorkflowError(f"config key 'model.torchscript': no file "
                        f"{config['model']['torchscript']!r}")
MODEL_REF = (f"python:{config['model']['python']}" if config["model"].get("python")
             else f"torchscript:{config['model']['torchscript']}" if config["model"].get("torchscript")
             else config["model"]["name"])
MODEL = config["model"].get("id") or get_spec(MODEL_REF).name
LAYERS = config["layers"]
RES = f"results/{DATASET}/{MODEL}"
SHARDS = [f"{i:03d}" for i in range(config["shards"])]
try:
    PROJECTION = projection_method(MODEL_REF, config["projection"])
except ValueError as e:
    raise WorkflowError(f"config key 'projection': {e}") from None

_model = None
if MODEL_REF.startswith("torchscript:"):
    try:
        _model = build_model(MODEL_REF, None)
    except ValueError as e:
        raise WorkflowError(f"config key 'model.torchscript': {e}") from None
try:
    resolve_layers(MODEL_REF, LAYERS, model=_model)  # fails before any work, listing the valid names
except ValueError as e:
    raise WorkflowError(f"config key 'layers': {e}") from None
_unknown = sorted(set(config["overrides"]) - set(LAYERS))
if _unknown:
    raise WorkflowError(
        f"config key 'overrides' names layers that are not in 'layers': {', '.join(_unknown)}; "
        f"configured layers: {', '.join(LAYERS)}"
    )

_needs = {"folder": "path", "url": "url", "imagenet_val": "tar"}.get(config["dataset"]["name"])
if _needs and not config["dataset"].get(_needs):
    raise WorkflowError(
        f"config key 'dataset.{_needs}' is required when dataset.name is {config['dataset']['name']}"
    )


wildcard_constraints:
    layer="|".join(re.escape(l) for l in LAYERS),
    shard=r"\d+",


def setting(layer, key):
    """A layer's value of a per-layer setting: its override, else the global value."""
    return config["overrides"].get(layer, {}).get(key, config[key])


def units_needed(layer):
    """How many units a layer must have for its `units` setting."""
    units = setting(layer, "units")
    return max(units) + 1 if isinstance(units, list) else units


try:
    check_units(MODEL_REF, {layer: units_needed(layer) for layer in LAYERS})
except ValueError as e:
    raise WorkflowError(f"config key 'units': {e}") from None


def figure_of(layer):
    """What the layer figure shows: patches only when there are no projections."""
    return "patches" if PROJECTION == "none" else setting(layer, "figure")


def grid_inputs(wildcards):
    inputs = {"patches": f"{RES}/patches/{wildcards.layer}.h5",
              "units": f"{RES}/units/{wildcards.layer}.parquet"}
    if figure_of(wildcards.layer) != "patches":
        inputs["projections"] = f"{RES}/projections/{wildcards.layer}.h5"
    return inputs


def projections_arg(wildcards, input):
    return f"--projections {input.projections}" if "projections" in input.keys() else ""


def units_arg(layer):
    units = setting(layer, "units")
    return ",".join(map(str, units)) + "," if isinstance(units, list) else str(units)


def model_files():
    """The model's own file (a TorchScript model), so that a new file reruns what it made."""
    return [config["model"]["torchscript"]] if config["model"].get("torchscript") else []


def model_args():
    """The model options every model-dependent stage takes."""
    m = config["model"]
    args = [f"--model '{MODEL_REF}'"]
    for key in ("input_size", "resize_size"):
        if m.get(key):
            args.append(f"--{key.replace('_', '-')} {m[key]}")
    for key in ("mean", "std"):
        if m.get(key):
            args.append(f"--{key} " + " ".join(map(str, m[key])))
    return " ".join(args)


def dataset_args():
    """The dataset settings for the dataset stage, as one quoted JSON argument."""
    spec = {k: v for k, v in config["dataset"].items() if v is not None}
    return "--spec " + shlex.quote(json.dumps(spec, sort_keys=True))


def inputs_path(shard="{shard}"):
    return f"{RES}/inputs/shard-{shard}.h5"


def activations_path(layer, shard="{shard}"):
    return f"{RES}/activations/{layer}/shard-{shard}.h5"


def all_inputs(wildcards=None):
    return [inputs_path(s) for s in SHARDS]


def layer_activations(wildcards):
    return [activations_path(wildcards.layer, s) for s in SHARDS]


def report_labels(wildcards):
    """The report's labels of a layer figure, read when the report is made (the layer table
    exists by then): layer, its receptive-field size, k and how units were picked."""
    import pandas as pd

    table = pd.read_parquet(f"{RES}/layers.parquet").set_index("layer")
    row = table.loc[wildcards.layer]
    return {"layer": wildcards.layer, "RF": f"{row.rf_size}x{row.rf_size_x} px",
            "units": f"{units_arg(wildcards.layer).rstrip(',')} ({setting(wildcards.layer, 'pick')})",
            "k": str(setting(wildcards.layer, "k"))}


def gallery_projections():
    """The projections the gallery shows (those the figures need)."""
    return [f"{RES}/projections/{layer}.h5" for layer in LAYERS if figure_of(layer) != "patches"]


def all_outputs():
    return ([f"{RES}/grids/{layer}.png" for layer in LAYERS]
            + [f"{RES}/layers.parquet", f"{RES}/gallery"])
