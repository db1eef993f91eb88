rule layers:
    input:
        model=model_files(),
    output:
        f"{RES}/layers.parquet",
    log:
        f"{RES}/logs/layers.log",
    benchmark:
        f"{RES}/benchmarks/layers.tsv"
    params:
        model=model_args(),
        layers=" ".join(LAYERS),
        code=stage_fingerprint("layers"),
    conda:
        "../../envs/unitscope.yaml"
    shell:
        "python -m unitscope layers {params.model} --layers {params.layers}"
        " --out {output} > {log} 2>&1"
