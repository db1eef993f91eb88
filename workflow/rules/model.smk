# What the model alone decides: its layer table with every position's receptive field, and the
# class weights of any layer right before its classifier.
rule layers:
    input:
        model_files=PLAN.architecture_files,
    output:
        table=L.layers_table,
        rf=[L.rf(layer) for layer in LAYERS],
    log:
        L.log("layers"),
    benchmark:
        L.benchmark("layers")
    params:
        model=MODEL,
        names=LAYERS,
        code=stage_fingerprint("layers"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule classes:
    input:
        model_files=PLAN.model_files,
    output:
        out=L.classes,
    log:
        L.log("classes"),
    params:
        model=MODEL,
        names=LAYERS,
        code=stage_fingerprint("classes"),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"
