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
        # with occlusion on: its figure (Fig. 7) and one row image per example, for the gallery
        **({"occlusion_out": report(L.occlusion_grid("{layer}"), caption="../report/occlusion.rst",
                                    category="Occlusion", labels=occlusion_labels),
            "occlusion_rows": directory(L.occlusion_rows("{layer}"))} if PLAN.occluded else {}),
    log:
        L.log("grids", "{layer}"),
    benchmark:
        L.benchmark("grids", "{layer}")
    params:
        image_roots=PLAN.image_roots,
        layer=layer_name,
        display_px=setting("display_px"),
        k=setting("k"),
        panels=layer_panels,
        figure=setting("figure"),
        facts=figure_facts,
        model=model_config,
        code=stage_fingerprint("grids"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule gallery_layer:
    input:
        unpack(image_folder),
        unpack(layer_gallery_files),
        table=L.layers_table,
        manifest=L.manifest,
        classes=L.classes,
    output:
        out=directory(L.gallery_layer("{layer}")),
    log:
        L.log("gallery_layer", "{layer}"),
    benchmark:
        L.benchmark("gallery_layer", "{layer}")
    params:
        image_roots=PLAN.image_roots,
        model=model_config,
        layer=layer_name,
        method=projection_method,
        k=setting("k"),
        code=stage_fingerprint("gallery_layer"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule gallery_index:
    input:
        unpack(image_folder),
        unpack(index_files),
        unpack(correspondence_table),
        table=L.layers_table,
        manifest=L.manifest,
        rejected=L.rejected,
        inputs=stored_inputs,
    output:
        index=L.gallery_file("index.html"),
        style=L.gallery_file("style.css"),
        inputs_dir=directory(L.gallery_file("inputs")),
        images_dir=directory(L.gallery_file("images")),
    log:
        L.log("gallery_index"),
    benchmark:
        L.benchmark("gallery_index")
    params:
        image_roots=PLAN.image_roots,
        model=model_config,
        names=LAYERS,
        title=gallery_title,
        links=gallery_links,
        code=stage_fingerprint("gallery_index"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


# The whole gallery as one folder, inside Snakemake's report (snakemake --report report.zip): one
# file carries the result to a colleague.
rule gallery_report:
    input:
        index=L.gallery_file("index.html"),
        style=L.gallery_file("style.css"),
        inputs_dir=L.gallery_file("inputs"),
        images_dir=L.gallery_file("images"),
        layers=[L.gallery_layer(layer) for layer in LAYERS],
        filters=L.filters_figure,
    output:
        out=report(
            directory(L.gallery_report),
            htmlindex="index.html",
            caption="../report/gallery.rst",
            category="Gallery",
            labels={"model": "{model}"},
        ),
    log:
        L.log("gallery_report"),
    params:
        code=stage_fingerprint("gallery_report"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"
