rule gallery:
    input:
        layers=f"{RES}/layers.parquet",
        manifest=f"results/{DATASET}/manifest.parquet",
        topk=expand(f"{RES}/topk/{{layer}}.parquet", layer=LAYERS),
        patches=expand(f"{RES}/patches/{{layer}}.h5", layer=LAYERS),
        projections=gallery_projections(),
        inputs=all_inputs,
    output:
        directory(f"{RES}/gallery"),
    log:
        f"{RES}/logs/gallery.log",
    benchmark:
        f"{RES}/benchmarks/gallery.tsv"
    params:
        shards=len(SHARDS),
        title=f"{MODEL} on {DATASET}",
        code=stage_fingerprint("gallery"),
    conda:
        "../../envs/unitscope.yaml"
    shell:
        "python -m unitscope gallery --results {RES} --manifest {input.manifest}"
        " --inputs {RES}/inputs --shards {params.shards} --title '{params.title}'"
        " --out {output} > {log} 2>&1"
