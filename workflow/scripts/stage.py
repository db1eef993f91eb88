"""Snakemake's door into a pipeline stage: calls the function of unitscope.stages named like the
rule with the rule's named inputs, outputs and params (and its threads, where the stage takes
them), with everything the stage prints going to the rule's log. `python -m unitscope <stage>`
is the other door into the same function."""
import inspect

from unitscope import stages
from unitscope.logs import stage_log

# named inputs and params that are there only so that Snakemake reruns the job when they change
RERUN_ONLY = {"code", "listing", "model_files", "dataset_files", "part_images"}


def plain(value):
    """Snakemake's Namedlist as a list, anything else as it is."""
    return list(value) if isinstance(value, list) else value


with stage_log(snakemake.log[0], snakemake.rule):
    stage = getattr(stages, snakemake.rule)
    kwargs = {name: plain(value)
              for io in (snakemake.input, snakemake.output, snakemake.params)
              for name, value in io.items() if name not in RERUN_ONLY}
    if "threads" in inspect.signature(stage).parameters:
        kwargs["threads"] = snakemake.threads
    stage(**kwargs)
