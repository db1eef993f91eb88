"""One function per pipeline stage: file paths and plain values in, files out. The Snakemake rule
(`workflow/scripts/stage.py`, which passes the rule's named inputs, outputs and params by name)
and `python -m unitscope <stage>` are two doors into these same functions. Heavy modules are
imported inside each function, so a stage loads only what it runs — and `fingerprint.py` reads
these imports to know which code each stage depends on."""
from __future__ import annotations

import logging

log = logging.getLogger("unitscope")


def _prep(model: dict):
    from .inputs import Preprocessing
    from .models import ModelConfig

    return Preprocessing.of(ModelConfig.from_dict(model).spec())


def _images(manifest: str, model: dict, inputs: list[str] | None = None):
    from .inputs import image_source

    return image_source(manifest, _prep(model), inputs or None)


def dataset(spec: dict, manifest: str, rejected: str, resources: str = "resources",
            threads: int = 1, record: str | None = None, identity: dict | None = None,
            image_folder: list[str] | None = None, image_roots: list[str] | None = None) -> None:
    """Fetch and index a dataset into manifest.parquet and rejected.parquet, and record what the
    dataset is (dataset.json: see datasets/identity.py). In the workflow its files were fetched
    by jobs of their own: `image_folder` is where this job sees each of `image_roots` (the
    unpacked archive, a storage folder, the tar shards; plan.dataset_sources), and the manifest
    names each image under its root as the plan does, the same for every job."""
    from .datasets.identity import dataset_identity, write_record
    from .datasets.index import index_images
    from .datasets.sources import candidates

    index_images(candidates(spec, resources, image_folder or None), manifest, rejected, threads)
    if image_folder and list(image_folder) != list(image_roots or []):
        import pandas as pd

        from .atomic import atomic_path
        from .inputs import rooted_paths

        for table in (manifest, rejected):
            t = pd.read_parquet(table)
            t["path"] = rooted_paths(t["path"], image_folder, image_roots).astype(t["path"].dtype)
            with atomic_path(table) as tmp:
                t.to_parquet(tmp, index=False)
    if record:
        write_record(identity or dataset_identity(spec), record)


def download(url: str, file: str, record: str, md5: str | None = None, sha256: str | None = None,
             check: str = "") -> None:
    """One download (plan.Fetch) into resources/downloads/<key>/: resumed, retried, checked (an
    archive read to its end; weights against the sha256 prefix in their name)."""
    import os

    from .datasets.download import download as fetch_url
    from .datasets.extract import check_archive
    from .models import check_hash_prefix

    checks = {"archive": check_archive, "weights": check_hash_prefix, "": None}
    fetch_url(url, file, md5, sha256, check=checks[check])
    if os.path.normpath(record) != os.path.normpath(file + ".sha256"):
        raise ValueError(f"download records {file}'s digest beside it, not at {record}")


def extract(archive: str, out: str, source: dict) -> None:
    """An archive (a download, or the user's ILSVRC2012 tar) unpacked into its own folder under
    resources/datasets/, members checked (no path outside it, no link, bounded size)."""
    from .datasets.extract import check_archive, extract_once

    check_archive(archive)
    extract_once(archive, out, source)


def inputs(manifest: str, model: dict, out: str, shard: int, shards: int, threads: int = 1) -> None:
    """Preprocess one shard of images into the inputs store (inputs: store)."""
    from .inputs import write_inputs

    write_inputs(manifest, out, shard, shards, _prep(model), threads)


def layers(model: dict, names: list[str], table: str, rf: list[str] | None = None) -> None:
    """The layer table and each layer's per-position receptive-field boxes (no data needed)."""
    from .layers import layer_table, write_layer_table
    from .models import ModelConfig, build_model, resolve_layers

    cfg = ModelConfig.from_dict(model)
    spec = cfg.spec()
    net = build_model(spec, weights=None, seed=cfg.seed)
    modules = resolve_layers(spec, list(names), model=net)
    views = cfg.layer_views()
    t, boxes = layer_table(net, modules, (spec.input_size, spec.input_size),
                           layouts={k: v.layout for k, v in views.items()},
                           tokens={k: v.tokens for k, v in views.items()})
    write_layer_table(t, boxes, table, dict(zip(names, rf)) if rf else None)


def shared_layers(source_table: str, source_rf: list[str], table: str, rf: list[str]) -> None:
    """A model's layer table and fields, copied from the model that differs from it only in
    weights (whose `layers` job computed them): the fields do not depend on the weights."""
    import shutil

    from .atomic import atomic_path

    for src, dst in zip([source_table, *source_rf], [table, *rf], strict=True):
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)


def filters(model: dict, table: str, figure: str) -> None:
    """The first convolution's filters: filters.parquet (norm, high-frequency share, dead) and
    filters.png (each filter as an RGB tile)."""
    from .filters import write_filters
    from .models import ModelConfig, build_model

    cfg = ModelConfig.from_dict(model)
    spec = cfg.spec()
    write_filters(build_model(spec, cfg.weights, cfg.seed), table, figure, cfg.id or spec.name)


def activations(manifest: str, model: dict, names: list[str], out: list[str], shard: int,
                shards: int, inputs: str | None = None, batch_size: int = 32, device: str = "auto",
                precision: str = "fp32", model_key: str = "", threads: int = 1) -> None:
    """Per-image spatial max/min statistics of each layer, for one shard."""
    from .activations import run_inference

    run_inference(manifest, model, list(names), list(out), shard, shards, inputs or None,
                  batch_size, device, threads, precision, model_key)


def topk(manifest: str, table: str, rf: str, layer: str, k: int, distinct: str, top: str,
         units: str, bottom: str, activations: list[str] | None = None,
         parts: list[str] | None = None, total: int | None = None,
         model_key: str | None = None) -> None:
    """Top-k, bottom-k and unit statistics of one layer, from its activation shards or from the
    partial results of blocks of them."""
    from .topk import select_topk

    select_topk(activations, manifest, table, rf, layer, k, distinct, model_key or None, top,
                units, bottom, parts=parts, total=total)


def topk_part(activations: list[str], manifest: str, table: str, layer: str, first: int,
              total: int, k: int, distinct: str, out: str, model_key: str | None = None) -> None:
    """The top-k pass over one block of shards (a tree merge of many shards)."""
    from .topk import partial_topk

    partial_topk(list(activations), manifest, table, layer, first, total, k, distinct,
                 model_key or None, out)


def shown(units: str, out: str, selection: dict) -> None:
    """Choose the units a layer's figures show (shown/L.json)."""
    from .shown import write_shown

    write_shown(units, out, selection["units"], selection["pick"], selection["seed"])


def ranges(manifest: str, table: str, rf: str, units: str, shown: str, layer: str,
           n_ranges: int, per_range: int, hist: str, out: str,
           activations: list[str] | None = None, parts: list[str] | None = None,
           total: int | None = None, model_key: str | None = None) -> None:
    """Every unit's histogram and the shown units' examples across their activation range."""
    from .ranges import histogram_and_ranges
    from .shown import read_shown

    histogram_and_ranges(activations, manifest, table, rf, units, layer,
                         read_shown(shown)["units"], n_ranges, per_range, model_key=model_key or None,
                         hist_out=hist, ranges_out=out, parts=parts, total=total)


def ranges_part(activations: list[str], manifest: str, table: str, rf: str, units: str,
                shown: str, layer: str, first: int, total: int, n_ranges: int, per_range: int,
                out: str, model_key: str | None = None) -> None:
    """The histogram-and-ranges pass over one block of shards (a tree merge of many shards)."""
    from .ranges import partial_ranges
    from .shown import read_shown

    partial_ranges(list(activations), manifest, table, rf, units, layer,
                   read_shown(shown)["units"], first, total, n_ranges, per_range,
                   model_key=model_key or None, out=out)


def patches(top: str, manifest: str, model: dict, layer: str, out: str, patch_max_px: int = 128,
            bottom: str | None = None, ranges: str | None = None,
            inputs: list[str] | None = None, rf: str | None = None) -> None:
    """Cut the patches of a layer's examples (top-k and bottom-k of every unit, range examples),
    with each example's token cell where the layer's cells differ from its fields (`rf`)."""
    from .examples import layer_examples
    from .patches import cut_patches, with_cells

    entries = layer_examples(top, bottom, ranges)
    if rf:
        entries = with_cells(entries, rf)
    with _images(manifest, model, inputs) as images:
        cut_patches(entries, images, out, patch_max_px, layer)


def _shown_examples(top, bottom, ranges, shown, figure, k=None):
    from .examples import layer_examples
    from .examples import MAX_SHOWN_PER_UNIT
    from .shown import read_shown

    kinds = {"top": ["top"], "bottom": ["bottom"], "both": ["top", "bottom"]}[figure] + ["range"]
    return layer_examples(top, bottom, ranges, read_shown(shown)["units"], kinds,
                          max_rank=min(k or MAX_SHOWN_PER_UNIT, MAX_SHOWN_PER_UNIT))


def _network(model: dict, layer: str, threads: int):
    """(spec, network with its weights, module path of `layer`, the layer's view or None),
    torch on `threads` threads."""
    import torch

    from .models import ModelConfig, build_model, resolve_layers

    torch.set_num_threads(max(threads, 1))
    cfg = ModelConfig.from_dict(model)
    spec = cfg.spec()
    net = build_model(spec, cfg.weights, cfg.seed)
    return spec, net, resolve_layers(spec, [layer], model=net)[layer], cfg.layer_views().get(layer)


def projections(top: str, shown: str, manifest: str, model: dict, layer: str, method: str,
                out: str, figure: str = "top", patch_max_px: int = 128, bottom: str | None = None,
                ranges: str | None = None, inputs: list[str] | None = None,
                compared: list[dict] | None = None, threads: int = 1) -> None:
    """Deconvnet / guided-backprop projections of the shown units' examples, and of the strongest
    example of each unit a comparison shows (`compared`: its units and seed, compare.py)."""
    import pandas as pd

    from .projections import write_projections

    spec, net, module, view = _network(model, layer, threads)
    entries = _shown_examples(top, bottom, ranges, shown, figure)
    if compared:
        from .compare_units import channel_count, choose_units
        from .examples import layer_examples

        t = pd.read_parquet(top)
        units = sorted({u for c in compared for u in choose_units(channel_count(t), c["units"], c["seed"])})
        extra = layer_examples(t, None, None, units, ("top",), max_rank=1)
        done = set(zip(entries["kind"], entries["unit"], entries["rank"]))
        extra = extra[[key not in done for key in zip(extra["kind"], extra["unit"], extra["rank"])]]
        entries = pd.concat([entries, extra], ignore_index=True)
    with _images(manifest, model, inputs) as images:
        write_projections(entries, images, out, net, module, spec.mean, spec.std, method,
                          patch_max_px, view=view)


def verify(top: str, shown: str, manifest: str, model: dict, layer: str, out: str,
           figure: str = "top", precision: str = "fp32", bottom: str | None = None,
           level: str = "shown", threads: int = 1, rf: str | None = None) -> None:
    """Rerun the network on the shown examples and check their stored activations (`level` all:
    also every unit's rank-0 top and bottom example, one forward pass per distinct image); the
    effective field is centred on each position's cell where attention gives it one (`rf`)."""
    import pandas as pd

    from .examples import layer_examples
    from .verify import verify_examples

    spec, net, module, view = _network(model, layer, threads)
    entries = _shown_examples(top, bottom, None, shown, figure)
    entries = entries[entries["kind"] != "range"]
    if rf:  # centre the effective field on each position's cell, where attention gives cells
        from .patches import with_cells

        entries = with_cells(entries, rf)
    if level == "all":  # every unit's rank-0 rows too, checked in the same forward passes
        rest = layer_examples(top, bottom, None, kinds=("top", "bottom"), max_rank=1)
        done = set(zip(entries["kind"], entries["unit"], entries["rank"]))
        rest = rest[[key not in done for key in zip(rest["kind"], rest["unit"], rest["rank"])]]
        checked = pd.concat([entries, rest], ignore_index=True)
    else:
        checked = entries
    with _images(manifest, model, None) as images:  # from the source files, whatever the store says
        verify_examples(checked, images, net, module, spec.mean, spec.std, precision, layer, out,
                        measure=entries[entries["rank"] == 0],  # the shown units' strongest
                        view=view)


def occlusion(top: str, shown: str, rf: str, table: str, manifest: str, model: dict, layer: str,
              out: str, settings: dict, model_key: str = "", inputs: list[str] | None = None,
              threads: int = 1) -> None:
    """Occlusion maps of each shown unit's strongest images (occlusion/L.h5)."""
    from .occlusion import Settings, occlusion_stage

    spec, net, module, view = _network(model, layer, threads)
    with _images(manifest, model, inputs) as images:
        occlusion_stage(top, shown, rf, table, manifest, images, net, module, spec.mean, spec.std,
                        layer, out, Settings.from_dict(settings), view, model_key)


def correspondence(images: str, model: dict, layers: list[str], out: str, draws: int = 10,
                   control_seed: int = 0, fill="mean", threads: int = 1) -> None:
    """Part correspondence of your own images and parts (correspondence.parquet); `control_seed`
    seeds the random control boxes (the model's `seed` seeds random weights)."""
    import torch

    from .correspondence import correspondence_stage

    torch.set_num_threads(max(threads, 1))
    correspondence_stage(images, model, list(layers), out, draws, control_seed, fill)


def invariance(top: str, shown: str, manifest: str, model: dict, layer: str, table: str,
               figure: str, settings: dict, threads: int = 1) -> None:
    """Invariance curves of a layer (invariance/L.parquet and L.png): its shown units' strongest
    images (or the ids given) translated, scaled and rotated before the preprocessing crop."""
    from .invariance import invariance_stage

    spec, net, module, view = _network(model, layer, threads)
    name = model.get("id") or spec.name
    invariance_stage(top, shown, manifest, net, module, spec, layer, settings, table, figure, view,
                     f"{name}, layer {layer}: what it is invariant to (Zeiler & Fergus Fig. 5)")


def compare(layer: str, name: str, models: list[str], topk: list[str], patches: list[str],
            choice: dict, table: str, figure: str, projected: list[bool] | None = None,
            projections: list[str] | None = None, display_px: int = 64) -> None:
    """One layer of a comparison between models (compare/<name>/L.parquet and L.png): `topk`
    and `patches` hold one file per model, in the order of `models`; `projections` one per
    model whose `projected` is true; `choice` is the units shown ({"units": N or [ids], "seed": s})."""
    from .compare import compare_stage

    projected = projected if projected is not None else [False] * len(models)
    if not len(topk) == len(patches) == len(projected) == len(models) or \
            len(projections or []) != sum(projected):
        raise ValueError(f"comparison {name} {layer}: {len(models)} models, but {len(topk)} top-k "
                         f"tables, {len(patches)} patch files, {len(projections or [])} projections")
    rest = iter(projections or [])
    sources = {m: {"topk": t, "patches": p, "projections": next(rest) if j else None}
               for m, t, p, j in zip(models, topk, patches, projected)}

    compare_stage(sources, layer, name, choice["units"], int(choice.get("seed", 0)), table, figure,
                  display_px)


def compare_page(name: str, models: list[str], layers: list[str], tables: list[str],
                 figures: list[str], index: str, style: str) -> None:
    """A comparison's page: each layer's figure and, per model, how much its units changed."""
    from .compare_page import write_compare_page

    write_compare_page(name, models, layers, tables, figures, index, style)


def classes(model: dict, names: list[str], out: str) -> None:
    """The strongest class weights of the units of any layer right before the classifier."""
    from .classes import write_class_weights

    write_class_weights(model, list(names), out)


def grids(patches: str, units: str, shown: str, table: str, manifest: str, layer: str, out: str,
          unit_dir: str, display_px: int = 64, k: int = 9, panels: str = "patches",
          figure: str = "top", projections: str | None = None, verify: str | None = None,
          facts: dict | None = None, occlusion: str | None = None, occlusion_out: str | None = None,
          occlusion_rows: str | None = None, model: dict | None = None,
          inputs: list[str] | None = None) -> None:
    """The layer figure and one figure per shown unit; with `occlusion`, also the occlusion figure
    (Fig. 7, `occlusion_out`) and each occluded example's row (`occlusion_rows`)."""
    import pandas as pd

    from .examples import median_erf
    from .grids import FigureFacts, draw_grids
    from .layers import layer_row
    from .shown import read_shown

    row = layer_row(table, layer)
    doc = read_shown(shown)
    erf = median_erf(pd.read_parquet(verify), "top") if verify else None
    rf = ((int(row["rf_size"]), int(row["rf_size_x"])) if bool(row["rf_affine"])
          else (int(row["rf_max_h"]), int(row["rf_max_w"])))
    picked = {"listed": "listed in the config"}.get(doc["pick"], f"picked by {doc['pick']}")
    info = FigureFacts(layer=layer, module=str(row["module"]),
                       shape=(int(row["channels"]), int(row["height"]), int(row["width"])),
                       input_size=int(row["input_h"]), rf=rf, rf_affine=bool(row["rf_affine"]),
                       erf=erf, picked=picked, notes=list(doc.get("notes", [])),
                       n_images=len(pd.read_parquet(manifest, columns=["image_id"])),
                       layout=str(row.get("layout", "nchw")), tokens=str(row.get("tokens", "")),
                       cell=bool(row.get("rf_cell", False)),
                       gated=((int(row["rf_theory_max_h"]), int(row["rf_theory_max_w"]))
                              if bool(row.get("rf_gated", False)) else None),
                       **(facts or {}))
    draw_grids(patches, units, doc, out, unit_dir, display_px, k, info, projections, panels, figure)
    if occlusion and occlusion_out:
        from .occlusion_figure import draw_occlusion_figure

        if model is None:
            raise ValueError("grids: the occlusion figure shows the images: give the model too")

        with _images(manifest, model, inputs) as images:
            draw_occlusion_figure(occlusion, patches, doc["units"], images, occlusion_out, layer,
                                  info.model, info.dataset, occlusion_rows)


def gallery_layer(table: str, manifest: str, model: dict, layer: str, out: str, topk: str,
                  units: str, shown: str, patches: str, rf: str, method: str = "",
                  classes: str | None = None, k: int | None = None, **files: str) -> None:
    """One layer's folder of the gallery: its page and every unit's page, from the layer's tables
    and patch files (the fields of gallery.LayerFiles: bottomk, hist, ranges, projections, ...)."""
    from .gallery import LayerFiles, build_layer_pages

    build_layer_pages(table, layer, LayerFiles(topk=topk, units=units, shown=shown,
                                               patches=patches, rf=rf, **files),
                      manifest, _prep(model), out, method, classes, k)


def gallery_report(index: str, style: str, inputs_dir: str, images_dir: str, layers: list[str],
                   out: str, filters: str | None = None) -> None:
    """The whole gallery as one folder (gallery_bundle.py), for Snakemake's report."""
    import logging

    from .gallery_bundle import bundle_gallery

    n = bundle_gallery(index, style, inputs_dir, images_dir, layers, filters, out)
    logging.getLogger("unitscope").info("gallery for the report: %d files in %s", n, out)


def gallery_index(table: str, manifest: str, rejected: str, model: dict, names: list[str],
                  topk: list[str], units: list[str], rf: list[str], bottomk: list[str],
                  ranges: list[str], activations: list[str], index: str, style: str,
                  inputs_dir: str, images_dir: str, title: str = "",
                  verify: list[str] | None = None, inputs: list[str] | None = None,
                  correspondence: str | None = None, links: dict | None = None) -> None:
    """The gallery's index page, style, input images and image pages; every list but
    `activations` holds one file per layer of `names` (`activations`: per layer, its shards).
    The outputs lie beside the layers' folders."""
    import os

    import pandas as pd

    from .gallery import LayerFiles, build_index

    folder = os.path.dirname(index)
    expected = {style: "style.css", inputs_dir: "inputs", images_dir: "images"}
    for path, name in expected.items():  # build_index writes them under these names
        if os.path.normpath(path) != os.path.normpath(os.path.join(folder, name)):
            raise ValueError(f"gallery_index writes {name} beside {index}, not at {path}")
    n = len(names)
    if any(len(v) != n for v in (topk, units, rf, bottomk, ranges, verify or names)) or \
            not activations or len(activations) % n:
        raise ValueError(f"gallery_index: {n} layers, but the file lists differ in length")
    per = len(activations) // n
    files = {name: LayerFiles(topk=topk[i], units=units[i], shown="", patches="", rf=rf[i],
                              bottomk=bottomk[i], ranges=ranges[i],
                              activations=activations[i * per:(i + 1) * per],
                              verify=verify[i] if verify else None)
             for i, name in enumerate(names)}
    with _images(manifest, model, inputs) as images:
        build_index(table, manifest, files, images, _prep(model), folder, title,
                    len(pd.read_parquet(rejected)), correspondence or None, links)
