"""Snakemake's door into a pipeline stage: calls the function of unitscope.stages named like the
rule with the rule's named inputs, outputs and params (and its threads, where the stage takes
them), with everything the stage prints going to the rule's log. `python -m unitscope <stage>`
is the other door into the same function."""
import inspect
import os
import tempfile

from unitscope import stages
from unitscope.logs import stage_log

# named inputs and params that are there only so that Snakemake reruns the job when they change
RERUN_ONLY = {"code", "listing", "model_files", "dataset_files", "part_images"}
# inputs there so that the job has them where it runs (a dataset folder in object storage, which
# the manifest's paths point into); passed on only to a stage that takes them
FETCH_ONLY = {"image_folder", "image_roots", "weights_file"}


def plain(value):
    """Snakemake's Namedlist as a list, anything else as it is."""
    return list(value) if isinstance(value, list) else value


with stage_log(snakemake.log[0], snakemake.rule):
    stage = getattr(stages, snakemake.rule)
    takes = inspect.signature(stage).parameters
    kwargs = {name: plain(value)
              for io in (snakemake.input, snakemake.output, snakemake.params)
              for name, value in io.items()
              if name not in RERUN_ONLY and (name not in FETCH_ONLY or name in takes)}
    if "threads" in takes:
        kwargs["threads"] = snakemake.threads
    with tempfile.TemporaryDirectory(prefix="unitscope-") as tmp:
        if "image_folder" in snakemake.input.keys() and "manifest" in kwargs and "image_folder" not in takes:
            # the manifest names images under the plan's image roots: this job reads its own copies
            from unitscope.inputs import localized_manifest

            kwargs["manifest"] = localized_manifest(
                kwargs["manifest"], list(snakemake.params.image_roots),
                list(snakemake.input.image_folder), os.path.join(tmp, "manifest.parquet"))
        if "weights_file" in snakemake.input.keys() and "model" in kwargs:
            # weights from a URL: the file the run's download job fetched (and checked)
            kwargs["model"] = {**kwargs["model"], "weights": snakemake.input.weights_file}
        stage(**kwargs)
