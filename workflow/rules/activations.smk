# One forward pass per shard captures every configured layer; each layer gets its own file so
# that the later stages of a layer depend on that layer's files only.
rule activations:
    input:
        unpack(weights_download),
        unpack(image_folder),
        unpack(shard_inputs),
        manifest=L.manifest,
        model_files=model_files(),
    output:
        out=[L.activations(layer, "{shard}") for layer in LAYERS],
    log:
        L.log("activations", "shard-{shard}"),
    benchmark:
        L.benchmark("activations", "shard-{shard}")
    params:
        image_roots=PLAN.image_roots,
        model=model_config,
        names=LAYERS,
        shard=shard_index,
        shards=PLAN.shards,
        batch_size=PLAN.batch_size,
        device=PLAN.device,
        precision=PLAN.precision,
        model_key=of_model("model_key"),
        code=stage_fingerprint("activations"),
    threads: 2
    resources:
        # with device: cuda, one GPU as each executor asks for it: SLURM and Kubernetes read gpu
        # (sbatch --gpus=1; a pod requesting nvidia.com/gpu), Google Batch reads nvidia_gpu
        **({"gpu": 1, "gpu_manufacturer": "nvidia", "nvidia_gpu": 1} if PLAN.device == "cuda" else {}),
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"
