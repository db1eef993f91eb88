# What a person looks at: the layer figures (in the report too) and the browsable gallery.
rule grids:
    input:
        unpack(figure_inputs),
    output:
        out=report(
            L.grid("{layer}"),
            caption="../report/grid.rst",
            category="Layer figures",
            labels=report_labels,
        ),
        unit_dir=directory(L.unit_grids("{layer}")),
    log:
        L.log("grids", "{layer}"),
    benchmark:
        L.benchmark("grids", "{layer}")
    params:
        layer=layer_name,
        display_px=setting("display_px"),
        k=setting("k"),
        panels=layer_panels,
        figure=setting("figure"),
        facts=figure_facts,
        code=stage_fingerprint("grids"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule gallery:
    input:
        gallery_inputs,
        table=L.layers_table,
        manifest=L.manifest,
        rejected=L.rejected,
        classes=L.classes,
        inputs=stored_inputs,
    output:
        out=directory(L.gallery),
    log:
        L.log("gallery"),
    benchmark:
        L.benchmark("gallery")
    params:
        model=MODEL,
        layers=gallery_files(),
        title=f"{L.model} on {L.dataset}",
        method=PLAN.projection,
        k=layer_ks(),
        code=stage_fingerprint("gallery"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"
