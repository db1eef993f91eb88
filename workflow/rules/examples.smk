# Per layer: the patches of its examples, the projections of the shown units' examples back to
# pixel space, and the re-verification of the shown examples against a fresh forward pass.
rule patches:
    input:
        unpack(image_folder),
        top=L.topk("{layer}"),
        bottom=L.bottomk("{layer}"),
        ranges=L.ranges("{layer}"),
        rf=L.rf("{layer}"),
        manifest=L.manifest,
        inputs=stored_inputs,
    output:
        out=L.patches("{layer}"),
    log:
        L.log("patches", "{layer}"),
    benchmark:
        L.benchmark("patches", "{layer}")
    params:
        image_roots=PLAN.image_roots,
        model=model_config,
        layer=layer_name,
        patch_max_px=setting("patch_max_px"),
        code=stage_fingerprint("patches"),
    priority: 2  # before the verification: the layer's pages wait for both
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule projections:
    input:
        unpack(weights_download),
        unpack(image_folder),
        unpack(projected_ranges),
        top=L.topk("{layer}"),
        bottom=L.bottomk("{layer}"),
        shown=L.shown("{layer}"),
        manifest=L.manifest,
        model_files=model_files(),
        inputs=stored_inputs,
    output:
        out=L.projections("{layer}"),
    log:
        L.log("projections", "{layer}"),
    benchmark:
        L.benchmark("projections", "{layer}")
    params:
        image_roots=PLAN.image_roots,
        model=model_config,
        layer=layer_name,
        method=projection_method,
        figure=setting("figure"),
        patch_max_px=setting("patch_max_px"),
        compared=compared_units,
        code=stage_fingerprint("projections"),
    threads: 1  # two such jobs side by side use 2 cores better than one with 2 threads
    priority: 3  # a layer's longest job: started first
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule verify:
    input:
        unpack(weights_download),
        unpack(image_folder),
        top=L.topk("{layer}"),
        bottom=L.bottomk("{layer}"),
        shown=L.shown("{layer}"),
        rf=L.rf("{layer}"),
        manifest=L.manifest,
        model_files=model_files(),
    output:
        out=L.verify("{layer}"),
    log:
        L.log("verify", "{layer}"),
    benchmark:
        L.benchmark("verify", "{layer}")
    params:
        image_roots=PLAN.image_roots,
        model=model_config,
        layer=layer_name,
        figure=setting("figure"),
        precision=PLAN.precision,
        level=PLAN.verify,
        code=stage_fingerprint("verify"),
    threads: 1
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"
