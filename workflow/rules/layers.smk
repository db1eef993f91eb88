rule layers:
    output:
        f"{RES}/layers.parquet",
    log:
        f"{RES}/logs/layers.log",
    params:
        layers=" ".join(LAYERS),
        code=stage_fingerprint("layers"),
    conda:
        "../../envs/unitscope.yaml"
    shell:
        "python -m unitscope layers --model {MODEL} --layers {params.layers}"
        " --out {output} > {log} 2>&1"
