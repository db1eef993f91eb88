# Per layer: the top-k/bottom-k tables and unit statistics (one pass over the shards), the units
# the figures show (chosen once), and every unit's histogram with the shown units' examples across
# their activation range (a second pass).
rule topk_part:
    input:
        activations=block_activations,
        manifest=L.manifest,
        table=L.layers_table,
    output:
        out=L.part("topk", "{layer}", "{block}"),
    log:
        L.log("topk_part", "{layer}-{block}"),
    params:
        layer=layer_name,
        first=block_first,
        total=PLAN.shards,
        k=setting("k"),
        distinct=setting("distinct"),
        model_key=of_model("model_key"),
        code=stage_fingerprint("topk_part"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule topk:
    input:
        unpack(pass_sources("topk")),
        manifest=L.manifest,
        table=L.layers_table,
        rf=L.rf("{layer}"),
    output:
        top=L.topk("{layer}"),
        units=L.units("{layer}"),
        bottom=L.bottomk("{layer}"),
    log:
        L.log("topk", "{layer}"),
    benchmark:
        L.benchmark("topk", "{layer}")
    params:
        layer=layer_name,
        k=setting("k"),
        distinct=setting("distinct"),
        total=PLAN.shards,
        model_key=of_model("model_key"),
        code=stage_fingerprint("topk"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule shown:
    input:
        units=L.units("{layer}"),
    output:
        out=L.shown("{layer}"),
    log:
        L.log("shown", "{layer}"),
    params:
        selection=layer_selection,
        code=stage_fingerprint("shown"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule ranges_part:
    input:
        activations=block_activations,
        manifest=L.manifest,
        table=L.layers_table,
        rf=L.rf("{layer}"),
        units=L.units("{layer}"),
        shown=L.shown("{layer}"),
    output:
        out=L.part("ranges", "{layer}", "{block}"),
    log:
        L.log("ranges_part", "{layer}-{block}"),
    params:
        layer=layer_name,
        first=block_first,
        total=PLAN.shards,
        n_ranges=setting("n_ranges"),
        per_range=setting("per_range"),
        model_key=of_model("model_key"),
        code=stage_fingerprint("ranges_part"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule ranges:
    input:
        unpack(pass_sources("ranges")),
        manifest=L.manifest,
        table=L.layers_table,
        rf=L.rf("{layer}"),
        units=L.units("{layer}"),
        shown=L.shown("{layer}"),
    output:
        hist=L.hist("{layer}"),
        out=L.ranges("{layer}"),
    log:
        L.log("ranges", "{layer}"),
    benchmark:
        L.benchmark("ranges", "{layer}")
    params:
        layer=layer_name,
        n_ranges=setting("n_ranges"),
        per_range=setting("per_range"),
        total=PLAN.shards,
        model_key=of_model("model_key"),
        code=stage_fingerprint("ranges"),
    priority: 2  # the layer's patches wait for it
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"
