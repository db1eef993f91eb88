# How units change: one layer across the models of a comparison (Fig. 4; beside the models, under
# results/D/compare/<name>/), the comparison's page, and, opt-in, each model's invariance curves
# (Fig. 5).
rule compare:
    input:
        unpack(compare_inputs),
    output:
        table=L.compare_table("{compare}", "{layer}"),
        figure=report(
            L.compare_figure("{compare}", "{layer}"),
            caption="../report/compare.rst",
            category="Comparisons",
            labels={"comparison": "{compare}", "layer": "{layer}"},
        ),
    log:
        L.compare_log("{compare}", "{layer}"),
    benchmark:
        L.compare_benchmark("{compare}", "{layer}")
    params:
        layer=layer_name,
        name=lambda wildcards: wildcards.compare,
        models=compare_setting("models"),
        projected=compare_projected,
        choice=compare_choice,
        display_px=setting("display_px"),
        code=stage_fingerprint("compare"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule compare_page:
    input:
        unpack(compare_page_inputs),
    output:
        index=L.compare_page("{compare}"),
        style=str(Path(L.compare_page("{compare}")).with_name("style.css")),
    log:
        L.compare_log("{compare}"),
    params:
        name=lambda wildcards: wildcards.compare,
        models=compare_setting("models"),
        layers=compare_setting("layers"),
        code=stage_fingerprint("compare_page"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule invariance:
    input:
        unpack(weights_download),
        unpack(image_folder),
        top=L.topk("{layer}"),
        shown=L.shown("{layer}"),
        manifest=L.manifest,
        model_files=model_files(),
    output:
        table=L.invariance("{layer}"),
        figure=report(
            L.invariance_figure("{layer}"),
            caption="../report/invariance.rst",
            category="Invariance",
            labels={"model": "{model}", "layer": "{layer}"},
        ),
    log:
        L.log("invariance", "{layer}"),
    benchmark:
        L.benchmark("invariance", "{layer}")
    params:
        image_roots=PLAN.image_roots,
        model=model_config,
        layer=layer_name,
        settings={k: v for k, v in (RUN.invariance or {}).items() if k not in ("layers", "models")},
        code=stage_fingerprint("invariance"),
    threads: 1
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"
