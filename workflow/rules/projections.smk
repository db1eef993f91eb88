# Projections back to pixel space (deconvnet or guided backpropagation) of the units a layer's
# figure shows, each cropped to its patch's receptive-field box.
rule projections:
    input:
        model=model_files(),
        topk=f"{RES}/topk/{{layer}}.parquet",
        units=f"{RES}/units/{{layer}}.parquet",
        inputs=all_inputs,
    output:
        f"{RES}/projections/{{layer}}.h5",
    log:
        f"{RES}/logs/projections/{{layer}}.log",
    benchmark:
        f"{RES}/benchmarks/projections/{{layer}}.tsv"
    params:
        model=model_args(),
        weights=config["model"]["weights"],
        method=PROJECTION,
        units=lambda w: units_arg(w.layer),
        pick=lambda w: setting(w.layer, "pick"),
        seed=lambda w: setting(w.layer, "seed"),
        patch_max_px=lambda w: setting(w.layer, "patch_max_px"),
        shards=len(SHARDS),
        code=stage_fingerprint("projections"),
    threads: 2
    conda:
        "../../envs/unitscope.yaml"
    shell:
        "python -m unitscope projections --topk {input.topk} --units-table {input.units}"
        " --inputs {RES}/inputs --shards {params.shards} {params.model} --weights '{params.weights}'"
        " --layer {wildcards.layer} --method {params.method} --units {params.units}"
        " --pick {params.pick} --seed {params.seed} --patch-max-px {params.patch_max_px}"
        " --threads {threads} --out {output} > {log} 2>&1"
