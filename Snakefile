# unitscope: for each chosen unit of each chosen layer, the image patches that excite it most
# (Zeiler & Fergus 2014, Fig. 2). All logic lives in the unitscope package; rules only call it.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/inputs.smk"
include: "workflow/rules/layers.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/topk.smk"
include: "workflow/rules/patches.smk"
include: "workflow/rules/projections.smk"
include: "workflow/rules/grids.smk"
include: "workflow/rules/gallery.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
