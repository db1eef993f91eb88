# unitscope: for each chosen unit of each chosen layer, the image patches that excite it most
# (Zeiler & Fergus 2014, Fig. 2). All logic lives in the unitscope package; rules only call it.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/examples.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/occlusion.smk"
include: "workflow/rules/compare.smk"


rule all:
    input:
        RUN.targets(),
    default_target: True
