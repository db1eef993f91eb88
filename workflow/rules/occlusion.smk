# Why a unit fires: occlusion maps of each shown unit's strongest images (the paper's Fig. 7; the
# layer's `grids` job draws their figure), and, opt-in, the part correspondence of the user's own
# images (Fig. 8).
rule occlusion:
    input:
        unpack(weights_download),
        unpack(image_folder),
        top=L.topk("{layer}"),
        shown=L.shown("{layer}"),
        rf=L.rf("{layer}"),
        table=L.layers_table,
        manifest=L.manifest,
        model_files=model_files(),
        inputs=stored_inputs,
    output:
        out=L.occlusion("{layer}"),
    log:
        L.log("occlusion", "{layer}"),
    benchmark:
        L.benchmark("occlusion", "{layer}")
    params:
        image_roots=PLAN.image_roots,
        model=model_config,
        layer=layer_name,
        settings=PLAN.occlusion,
        model_key=of_model("model_key"),
        code=stage_fingerprint("occlusion"),
    threads: 1  # beside the layer's projections and verification, one core each
    priority: 1
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule correspondence:
    input:
        unpack(weights_download),
        images=installed([PLAN.correspondence["images"]] if PLAN.correspondence else []),
        part_images=installed(PLAN.correspondence_files[1:]),
        model_files=model_files(),
    output:
        out=L.correspondence,
    log:
        L.log("correspondence"),
    benchmark:
        L.benchmark("correspondence")
    params:
        model=model_config,
        layers=(PLAN.correspondence or {}).get("layers", []),
        draws=(PLAN.correspondence or {}).get("draws", 10),
        control_seed=(PLAN.correspondence or {}).get("seed", 0),
        fill=PLAN.occlusion.get("fill", "mean"),
        code=stage_fingerprint("correspondence"),
    threads: 2
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"
