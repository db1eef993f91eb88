rule dataset:
    output:
        manifest=f"results/{DATASET}/manifest.parquet",
        rejected=f"results/{DATASET}/rejected.parquet",
    log:
        f"results/{DATASET}/logs/dataset.log",
    benchmark:
        f"results/{DATASET}/benchmarks/dataset.tsv"
    params:
        args=dataset_args(),
        code=stage_fingerprint("dataset"),
    threads: 2
    conda:
        "../../envs/unitscope.yaml"
    shell:
        "python -m unitscope dataset {params.args} --resources resources --manifest {output.manifest}"
        " --rejected {output.rejected} --threads {threads} > {log} 2>&1"
