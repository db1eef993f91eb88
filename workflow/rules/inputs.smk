rule inputs:
    input:
        manifest=f"results/{DATASET}/manifest.parquet",
    output:
        inputs_path(),
    log:
        f"{RES}/logs/inputs/shard-{{shard}}.log",
    benchmark:
        f"{RES}/benchmarks/inputs/shard-{{shard}}.tsv"
    params:
        model=model_args(),
        shards=config["shards"],
        code=stage_fingerprint("inputs"),
    threads: 2
    conda:
        "../../envs/unitscope.yaml"
    shell:
        "python -m unitscope inputs --manifest {input.manifest} {params.model}"
        " --shard {wildcards.shard} --shards {params.shards} --out {output}"
        " --threads {threads} > {log} 2>&1"
