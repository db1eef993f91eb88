# One forward pass per shard captures every configured layer; each layer gets its own file so
# that the later stages of a layer depend on that layer's files only.
rule activations:
    input:
        model=model_files(),
        inputs=inputs_path(),
        layers=f"{RES}/layers.parquet",
    output:
        [activations_path(layer) for layer in LAYERS],
    log:
        f"{RES}/logs/activations/shard-{{shard}}.log",
    benchmark:
        f"{RES}/benchmarks/activations/shard-{{shard}}.tsv"
    params:
        model=model_args(),
        layers=" ".join(LAYERS),
        weights=config["model"]["weights"],
        batch_size=config["batch_size"],
        device=config["device"],
        precision=config["precision"],
        code=stage_fingerprint("activations"),
    threads: 2
    resources:
        gpu=1 if config["device"] == "cuda" else 0,  # on SLURM: sbatch --gpus=1
    conda:
        "../../envs/unitscope.yaml"
    shell:
        "python -m unitscope activations --inputs {input.inputs} {params.model}"
        " --weights '{params.weights}' --layers {params.layers} --out {output}"
        " --batch-size {params.batch_size} --device {params.device}"
        " --precision {params.precision} --threads {threads} > {log} 2>&1"
