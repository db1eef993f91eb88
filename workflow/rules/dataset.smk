# The images: indexed once into the manifest (reruns when any file of the dataset changes), and,
# with `inputs: store`, preprocessed once into one HDF5 file per shard.
rule dataset:
    input:
        unpack(image_folder),
        dataset_files=installed(PLAN.dataset_files),
    output:
        manifest=L.manifest,
        rejected=L.rejected,
        record=L.dataset_record,
    log:
        L.log("dataset"),
    benchmark:
        L.benchmark("dataset")
    params:
        spec=PLAN.dataset,
        identity=PLAN.dataset_identity,
        resources="resources",
        listing=PLAN.dataset_listing,
        code=stage_fingerprint("dataset"),
    threads: 2
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"


rule inputs:
    input:
        unpack(image_folder),
        manifest=L.manifest,
    output:
        out=L.inputs("{shard}"),
    log:
        L.log("inputs", "shard-{shard}"),
    benchmark:
        L.benchmark("inputs", "shard-{shard}")
    params:
        model=model_config,
        shard=shard_index,
        shards=PLAN.shards,
        code=stage_fingerprint("inputs"),
    threads: 2
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"
