# The images: downloads (archives, tar shards, weights) and the unpacking of an archive, each by a
# job of its own under resources/; the index of the images into the manifest (reruns when any file
# of the dataset changes); with `inputs: store`, one HDF5 file per shard of preprocessed images.
if FETCHES:

    rule download:
        output:
            file="resources/downloads/{key}/{name}",
            record="resources/downloads/{key}/{name}.sha256",
        log:
            "resources/downloads/{key}/{name}.log",
        wildcard_constraints:
            key=one_of(FETCHES),
            name=one_of({f.name for f in FETCHES.values()}),
        params:
            url=fetch_setting("url"),
            md5=fetch_setting("md5"),
            sha256=fetch_setting("sha256"),
            check=fetch_setting("check"),
            code=stage_fingerprint("download"),
        conda:
            "../../envs/unitscope.yaml"
        script:
            "../scripts/stage.py"


if PLAN.unpacked:

    rule extract:
        input:
            archive=image_root(PLAN.archive),
        output:
            out=directory(PLAN.unpacked),
        log:
            L.log("extract"),
        params:
            source={"archive": PLAN.archive},
            code=stage_fingerprint("extract"),
        conda:
            "../../envs/unitscope.yaml"
        script:
            "../scripts/stage.py"


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
        image_roots=PLAN.image_roots,
        spec=PLAN.dataset,
        identity=PLAN.dataset_identity,
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
        image_roots=PLAN.image_roots,
        model=model_config,
        shard=shard_index,
        shards=PLAN.shards,
        code=stage_fingerprint("inputs"),
    threads: 2
    conda:
        "../../envs/unitscope.yaml"
    script:
        "../scripts/stage.py"
