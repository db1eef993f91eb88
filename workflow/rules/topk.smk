rule topk:
    input:
        activations=layer_activations,
        manifest=f"results/{DATASET}/manifest.parquet",
        layers=f"{RES}/layers.parquet",
    output:
        topk=f"{RES}/topk/{{layer}}.parquet",
        units=f"{RES}/units/{{layer}}.parquet",
    log:
        f"{RES}/logs/topk/{{layer}}.log",
    benchmark:
        f"{RES}/benchmarks/topk/{{layer}}.tsv"
    params:
        k=lambda w: setting(w.layer, "k"),
        distinct=lambda w: setting(w.layer, "distinct"),
        shards=len(SHARDS),
        code=stage_fingerprint("topk"),
    conda:
        "../../envs/unitscope.yaml"
    shell:
        "python -m unitscope topk --layer {wildcards.layer} --shards {params.shards}"
        " --activations {RES}/activations/{wildcards.layer}"
        " --manifest {input.manifest} --layers-table {input.layers} --k {params.k}"
        " --distinct {params.distinct} --out {output.topk} --units-out {output.units} > {log} 2>&1"
