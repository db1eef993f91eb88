rule patches:
    input:
        topk=f"{RES}/topk/{{layer}}.parquet",
        inputs=all_inputs,
    output:
        f"{RES}/patches/{{layer}}.h5",
    log:
        f"{RES}/logs/patches/{{layer}}.log",
    benchmark:
        f"{RES}/benchmarks/patches/{{layer}}.tsv"
    params:
        patch_max_px=lambda w: setting(w.layer, "patch_max_px"),
        shards=len(SHARDS),
        code=stage_fingerprint("patches"),
    conda:
        "../../envs/unitscope.yaml"
    shell:
        "python -m unitscope patches --topk {input.topk} --inputs {RES}/inputs --shards {params.shards}"
        " --patch-max-px {params.patch_max_px} --out {output} > {log} 2>&1"
