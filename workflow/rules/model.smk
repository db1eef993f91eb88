# What the model alone decides: its layer table with every position's receptive field (computed
# once for models that differ only in weights, and copied to the others), the class weights of any
# layer right before its classifier, and the first layer's filters.
rule layers:
    input:
        model_files=model_files("architecture_files"),
    output:
        table=L.layers_table,
        rf=[L.rf(layer) for layer in LAYERS],
    log:
        L.log("layers"),
    benchmark:
        L.benchmark("layers")
    wildcard_constraints:
        model=one_of(RUN.table_owners()),
    params:
        model=architecture,
        names=LAYERS,
        code=stage_fingerprint("layers"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule shared_layers:
    input:
        unpack(table_source),
    output:
        table=L.layers_table,
        rf=[L.rf(layer) for layer in LAYERS],
    log:
        L.log("shared_layers"),
    wildcard_constraints:
        model=one_of(set(RUN.ids) - set(RUN.table_owners())),
    params:
        code=stage_fingerprint("shared_layers"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule classes:
    input:
        unpack(weights_download),
        model_files=model_files(),
    output:
        out=L.classes,
    log:
        L.log("classes"),
    params:
        model=model_config,
        names=LAYERS,
        code=stage_fingerprint("classes"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule filters:
    input:
        unpack(weights_download),
        model_files=model_files(),
    output:
        table=L.filters_table,
        figure=report(L.filters_figure, caption="../report/filters.rst", category="Filters",
                      labels={"model": "{model}"}),
    log:
        L.log("filters"),
    params:
        model=model_config,
        code=stage_fingerprint("filters"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"
