rule grids:
    input:
        unpack(grid_inputs),
    output:
        figure=report(
            f"{RES}/grids/{{layer}}.png",
            caption="../report/grid.rst",
            category="Layer figures",
            labels=report_labels,
        ),
        unit_dir=directory(f"{RES}/grids/{{layer}}"),
    log:
        f"{RES}/logs/grids/{{layer}}.log",
    benchmark:
        f"{RES}/benchmarks/grids/{{layer}}.tsv"
    params:
        units=lambda w: units_arg(w.layer),
        pick=lambda w: setting(w.layer, "pick"),
        seed=lambda w: setting(w.layer, "seed"),
        k=lambda w: setting(w.layer, "k"),
        display_px=lambda w: setting(w.layer, "display_px"),
        figure=lambda w: figure_of(w.layer),
        projections=projections_arg,
        code=stage_fingerprint("grids"),
    conda:
        "../../envs/unitscope.yaml"
    shell:
        "python -m unitscope grids --patches {input.patches} --units-table {input.units}"
        " --units {params.units} --pick {params.pick} --seed {params.seed} --k {params.k}"
        " --display-px {params.display_px} --figure {params.figure} {params.projections}"
        " --out {output.figure} --unit-dir {output.unit_dir}"
        " > {log} 2>&1"
