"""`python -m unitscope <stage> ...`: each pipeline stage as a command (the Snakemake rules call
exactly these), plus `layers` to print a model's layer table without any data."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

log = logging.getLogger("unitscope")


def _units(value: str) -> int | list[int]:
    """`9` or `[3, 17, 42]` / `3,17,42`."""
    value = value.strip()
    if value.startswith("["):
        return [int(v) for v in json.loads(value)]
    if "," in value:
        return [int(v) for v in value.split(",") if v]
    return int(value)


def shard_files(paths: list[str], shards: int | None) -> list[str]:
    """Shard files given one by one, or as a folder plus a count (a command line naming
    thousands of files would outgrow the shell's limits)."""
    if len(paths) == 1 and os.path.isdir(paths[0]):
        if not shards:
            raise ValueError(f"{paths[0]} is a folder: give --shards N")
        files = [os.path.join(paths[0], f"shard-{i:03d}.h5") for i in range(shards)]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {shards} shards missing, e.g. {missing[0]}")
        return files
    return paths


def _model_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model", required=True,
                   help="a built-in name, python:package.module:factory, or "
                        "torchscript:path/to/model.pt")
    s.add_argument("--input-size", type=int, help="square input size (own models)")
    s.add_argument("--resize-size", type=int, help="shorter side before the centre crop")
    s.add_argument("--mean", type=float, nargs=3, help="per-channel mean, 0-255 scale")
    s.add_argument("--std", type=float, nargs=3, help="per-channel std, 0-255 scale")


def _spec(args: argparse.Namespace):
    from .models import get_spec

    return get_spec(args.model, args.input_size, args.resize_size, args.mean, args.std)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m unitscope", description=__doc__)
    sub = p.add_subparsers(dest="stage", required=True)

    s = sub.add_parser("dataset", help="fetch and index a dataset into manifest.parquet and rejected.parquet")
    s.add_argument("--spec", help='the dataset settings as JSON, e.g. \'{"name": "imagenette", '
                                  '"size": 160, "split": "val", "max_images": 500}\'')
    s.add_argument("--source", choices=["sample", "folder"], help="shorthand for a simple --spec")
    s.add_argument("--path", help="folder of images (source folder)")
    s.add_argument("--max-images", type=int)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resources", default="resources", help="where downloads and archives go")
    s.add_argument("--manifest", required=True)
    s.add_argument("--rejected", required=True)
    s.add_argument("--threads", type=int, default=1)

    s = sub.add_parser("inputs", help="preprocess one shard of images into the inputs store")
    s.add_argument("--manifest", required=True)
    _model_args(s)
    s.add_argument("--shard", type=int, default=0)
    s.add_argument("--shards", type=int, default=1)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)

    s = sub.add_parser("layers", help="print (and write) the layer table: shapes and receptive fields")
    _model_args(s)
    s.add_argument("--layers", nargs="+", help="aliases or module paths (default: every alias)")
    s.add_argument("--out", help="write layers.parquet here")
    s.add_argument("--no-probe", action="store_true", help="skip the gradient-probe cross-check")

    s = sub.add_parser("activations", help="per-image spatial max/argmax of each layer, one shard")
    s.add_argument("--inputs", required=True)
    _model_args(s)
    s.add_argument("--weights", default="imagenet", help="imagenet, none, or a state_dict path")
    s.add_argument("--layers", nargs="+", required=True)
    s.add_argument("--out", nargs="+", required=True, help="one output file per layer, same order")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    s.add_argument("--threads", type=int, default=1)

    s = sub.add_parser("topk", help="top-k table and unit statistics of one layer")
    s.add_argument("--layer", required=True)
    s.add_argument("--activations", nargs="+", required=True,
                   help="the layer's shard files, or its folder (then with --shards)")
    s.add_argument("--manifest", required=True)
    s.add_argument("--layers-table", required=True)
    s.add_argument("--shards", type=int, help="with a folder: how many shard-XXX.h5 it holds")
    s.add_argument("--k", type=int, default=9)
    s.add_argument("--distinct", default="image", choices=["image", "group"])
    s.add_argument("--out", required=True)
    s.add_argument("--units-out", required=True)

    s = sub.add_parser("patches", help="cut the top-k patches of one layer")
    s.add_argument("--topk", required=True)
    s.add_argument("--inputs", nargs="+", required=True,
                   help="the inputs shard files, or their folder (then with --shards)")
    s.add_argument("--shards", type=int, help="with a folder: how many shard-XXX.h5 it holds")
    s.add_argument("--patch-max-px", type=int, default=128)
    s.add_argument("--out", required=True)

    s = sub.add_parser("projections", help="deconvnet / guided-backprop projections of shown units")
    s.add_argument("--topk", required=True)
    s.add_argument("--units-table", required=True)
    s.add_argument("--inputs", nargs="+", required=True)
    s.add_argument("--shards", type=int)
    _model_args(s)
    s.add_argument("--weights", default="imagenet")
    s.add_argument("--layer", required=True)
    s.add_argument("--method", default="deconvnet", choices=["deconvnet", "guided_backprop"])
    s.add_argument("--units", type=_units, default=9)
    s.add_argument("--pick", default="top", choices=["top", "random", "first"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--patch-max-px", type=int, default=128)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--out", required=True)

    s = sub.add_parser("grids", help="draw the layer figure and one figure per unit")
    s.add_argument("--patches", required=True)
    s.add_argument("--units-table", required=True)
    s.add_argument("--units", type=_units, default=9, help="how many, or a list of unit ids")
    s.add_argument("--pick", default="top", choices=["top", "random", "first"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--k", type=int)
    s.add_argument("--display-px", type=int, default=64)
    s.add_argument("--projections", help="projections file: shown beside the patches")
    s.add_argument("--figure", default="patches", choices=["patches", "projections", "both"])
    s.add_argument("--out", required=True)
    s.add_argument("--unit-dir", required=True)
    s = sub.add_parser("gallery", help="the browsable static site of one results/D/M folder")
    s.add_argument("--results", required=True, help="results/D/M")
    s.add_argument("--manifest", required=True)
    s.add_argument("--inputs", nargs="+", required=True)
    s.add_argument("--shards", type=int)
    s.add_argument("--title", default="")
    s.add_argument("--out", required=True)

    s = sub.add_parser("show", help="print one unit's top-k rows and the path of its figure")
    s.add_argument("--results", default=None, help="results/D/M (default: the only one there is)")
    s.add_argument("--layer", required=True)
    s.add_argument("--unit", type=int, required=True)
    return p


def show(results: str | None, layer: str, unit: int) -> str:
    """The text `python -m unitscope show` prints."""
    import glob

    import pandas as pd

    if results is None:
        found = sorted({os.path.dirname(os.path.dirname(p)) for p in
                        glob.glob(f"results/*/*/topk/{glob.escape(layer)}.parquet")})
        if len(found) != 1:
            raise ValueError(f"{len(found)} results folders have layer {layer!r}"
                             + (f" ({', '.join(found)})" if found else "") + "; give --results")
        results = found[0]
    path = os.path.join(results, "topk", f"{layer}.parquet")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    top = pd.read_parquet(path)
    rows = top[top["unit"] == unit]
    if rows.empty:
        raise ValueError(f"layer {layer} has units 0..{top['unit'].max()}, not {unit}")
    manifest = pd.read_parquet(os.path.join(os.path.dirname(results), "manifest.parquet"))
    rows = rows.merge(manifest[["image_id", "label", "path"]], on="image_id", how="left")
    lines = [f"{layer} unit {unit}: top {len(rows)} images"]
    for r in rows.itertuples():
        lines.append(f"  #{r.rank}  image {r.image_id:<6} activation {r.activation:<10.4g} "
                     f"box y {r.y0}..{r.y1} x {r.x0}..{r.x1}  label {r.label}  {r.path}")
    for fig in (os.path.join(results, "grids", layer, f"unit-{unit:04d}.png"),
                os.path.join(results, "gallery", layer, f"unit-{unit:04d}.html")):
        lines.append(("figure: " if fig.endswith(".png") else "gallery: ") + fig
                     + ("" if os.path.exists(fig) else " (not made: the unit is not shown)"))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    if args.stage == "dataset":
        from .datasets.index import index_images
        from .datasets.sources import candidates

        if args.spec:
            spec = json.loads(args.spec)
        elif args.source:
            spec = {"name": args.source, "path": args.path, "max_images": args.max_images,
                    "seed": args.seed}
        else:
            raise ValueError("give --spec JSON or --source")
        if spec["name"] == "folder" and not spec.get("path"):
            raise ValueError("dataset folder needs a path")
        index_images(candidates(spec, args.resources), args.manifest, args.rejected, args.threads)
    elif args.stage == "inputs":
        from .inputs import write_inputs

        spec = _spec(args)
        write_inputs(args.manifest, args.out, args.shard, args.shards, spec.resize_size,
                     spec.input_size, args.threads, spec.resample)
    elif args.stage == "layers":
        from .layers import format_table, layer_table, write_layer_table

        spec = _spec(args)
        layers = args.layers or list(spec.aliases)
        if not layers:
            raise ValueError(f"model {args.model} has no aliases: name its layers with --layers")
        table = layer_table(args.model, layers, probe=not args.no_probe, spec=spec)
        if args.out:
            write_layer_table(table, args.out)
        else:
            print(format_table(table))
    elif args.stage == "activations":
        from .activations import run_inference

        weights = None if args.weights == "none" else args.weights
        run_inference(args.inputs, args.model, args.layers, args.out, weights, args.batch_size,
                      args.device, args.threads, args.precision, spec=_spec(args))
    elif args.stage == "topk":
        from .topk import select_topk

        select_topk(shard_files(args.activations, args.shards), args.manifest, args.layers_table, args.layer, args.k,
                    args.distinct, args.out, args.units_out)
    elif args.stage == "patches":
        from .patches import cut_patches

        cut_patches(args.topk, shard_files(args.inputs, args.shards), args.out, args.patch_max_px)
    elif args.stage == "projections":
        import pandas as pd
        import torch

        from .grids import select_units
        from .models import build_model, resolve_layers
        from .projections import write_projections

        torch.set_num_threads(max(args.threads, 1))
        spec = _spec(args)
        weights = None if args.weights == "none" else args.weights
        model = build_model(args.model, weights, spec)
        module = resolve_layers(args.model, [args.layer], spec)[args.layer]
        units = select_units(pd.read_parquet(args.units_table), args.units, args.pick, args.seed)
        write_projections(args.topk, shard_files(args.inputs, args.shards), args.out, model,
                          module, spec.mean, spec.std, units, args.method, args.patch_max_px)
    elif args.stage == "gallery":
        from .gallery import build_gallery

        build_gallery(args.results, args.manifest, shard_files(args.inputs, args.shards), args.out,
                      args.title)
    elif args.stage == "show":
        print(show(args.results, args.layer, args.unit))
    elif args.stage == "grids":
        from .grids import draw_grids

        draw_grids(args.patches, args.units_table, args.out, args.unit_dir, args.units,
                   args.pick, args.seed, args.display_px, args.k, projections_path=args.projections,
                   figure=args.figure)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError, RuntimeError) as e:
        log.error("%s failed: %s", args.stage, e)
        return 1
    return 0
