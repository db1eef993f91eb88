"""`python -m unitscope <command> ...`: every pipeline stage as a command — its options are the
stage function's parameters (unitscope/stages.py), so the command line and the Snakemake rule
always take the same values — plus `layers` (a model's layer table, no data needed), `show`
(one unit's examples) and `image` (one image's view)."""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import typing

from .atomic import is_disk_full
from .logs import USER_ERRORS, configure, exit_now, one_line

log = logging.getLogger("unitscope")

MODEL_OPTIONS = ("weights", "seed", "input_size", "resize_size", "mean", "std", "trust_code")


def _model_options(s: argparse.ArgumentParser, required: bool = True) -> None:
    s.add_argument("--model", required=required,
                   help="a built-in name, python:package.module:factory, or a torch.export "
                        "file (.pt2); or the model block as JSON")
    s.add_argument("--weights", help="imagenet, none, a URL, or a state_dict path")
    s.add_argument("--seed", type=int, help="seed of random weights")
    s.add_argument("--input-size", type=int, help="square input size (own models)")
    s.add_argument("--resize-size", type=int, help="shorter side before the centre crop")
    s.add_argument("--mean", type=float, nargs=3, help="per-channel mean, 0-255 scale")
    s.add_argument("--std", type=float, nargs=3, help="per-channel std, 0-255 scale")
    s.add_argument("--trust-code", action="store_true", default=None,
                   help="read a .pt2 with torch.export.load even where it would run code from the "
                        "file (only for files you trust)")


def model_dict(args: argparse.Namespace) -> dict:
    """The model block from --model (a reference or JSON) and the model options."""
    from .models import ModelConfig

    extra = {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k, None) is not None}
    if args.model.lstrip().startswith("{"):
        return ModelConfig.from_dict({**json.loads(args.model), **extra}).as_dict()
    return ModelConfig.from_ref(args.model, **{k: tuple(v) if isinstance(v, list) else v
                                               for k, v in extra.items()}).as_dict()


def _json(value: str):
    try:
        return json.loads(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None


def _add_stage(sub, name: str, fn) -> None:
    """A subcommand whose options are the stage function's parameters."""
    doc = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph
    s = sub.add_parser(name, help=doc, description=doc)
    hints = typing.get_type_hints(fn)
    for pname, param in inspect.signature(fn).parameters.items():
        if pname == "model":  # required where the stage always builds the network
            _model_options(s, required=param.default is inspect.Parameter.empty)
            continue
        hint = str(hints.get(pname, ""))
        kw: dict = {"dest": pname}
        if param.default is inspect.Parameter.empty:
            kw["required"] = True
        else:
            kw["default"] = param.default
        if "list" in hint:
            kw["nargs"] = "+"
        elif "dict" in hint:
            kw["type"] = _json
            kw["metavar"] = "JSON"
        elif "int" in hint:
            kw["type"] = int
        s.add_argument("--" + pname.replace("_", "-"), **kw)
    s.set_defaults(run=lambda args, fn=fn: _call_stage(fn, args))


def _call_stage(fn, args: argparse.Namespace) -> None:
    kwargs = {}
    for pname in inspect.signature(fn).parameters:
        if pname == "model":
            kwargs[pname] = model_dict(args) if args.model else None
        else:
            kwargs[pname] = getattr(args, pname)
    fn(**kwargs)


def layers_command(args: argparse.Namespace) -> None:
    """Print (and write) a model's layer table and per-position boxes; no data needed."""
    from .layers import format_table, layer_table, write_layer_table
    from .models import ModelConfig, build_model, fit_to_program, resolve_layers

    cfg = ModelConfig.from_dict(model_dict(args))
    spec = cfg.spec()
    net = build_model(spec, weights=None, seed=cfg.seed)
    spec = fit_to_program(spec, net, cfg.input_size, cfg.resize_size)
    names = args.layers or list(spec.aliases)
    if not names:
        raise ValueError(f"model {spec.name} has no aliases: name its layers with --layers")
    layouts = {}
    for item in args.layout or []:
        layer, _, layout = item.partition("=")
        if layer not in names or not layout:
            raise ValueError(f"--layout {item!r}: expected LAYER=LAYOUT with LAYER one of --layers")
        layouts[layer] = layout
    table, boxes = layer_table(net, resolve_layers(spec, names, model=net),
                               (spec.input_size, spec.input_size), probe=not args.no_probe,
                               layouts=layouts, tokens={n: args.tokens for n in names})
    rf = {n: os.path.join(args.boxes_out, f"{n}.parquet") for n in names} if args.boxes_out else None
    if args.table or rf:
        from .atomic import atomic_path

        if args.table:
            write_layer_table(table, boxes, args.table, rf, announce=False)
        else:
            for n, path in rf.items():
                with atomic_path(path) as tmp:
                    boxes[n].to_parquet(tmp, index=False)
    print(format_table(table))


def _results(results: str | None, layer: str | None = None):
    """The Layout of the results folder `--results` names (or the only one there is), checked to
    be one unitscope wrote and to have been made from the manifest now beside it."""
    import glob

    from .plan import Layout

    if results is None:
        pattern = f"results/*/*/topk/{glob.escape(layer)}.parquet" if layer else "results/*/*/layers.parquet"
        found = sorted({p.rsplit("/topk/", 1)[0] if layer else os.path.dirname(p)
                        for p in glob.glob(pattern)})
        if len(found) != 1:
            raise ValueError(f"{len(found)} results folders" + (f" have layer {layer!r}" if layer else "")
                             + (f" ({', '.join(found)})" if found else "") + "; give --results")
        results = found[0]
    if not os.path.isfile(os.path.join(results, "layers.parquet")):
        inner = sorted(os.path.dirname(p) for p in
                       glob.glob(os.path.join(glob.escape(results), "*", "layers.parquet")))
        hint = f"; did you mean {' or '.join(inner)}?" if inner else ""
        raise ValueError(f"--results {results}: not a results folder of unitscope "
                         f"(results/<dataset>/<model>, holding layers.parquet){hint}")
    L = Layout.of(results)
    _check_manifest(L)
    return L


def _check_manifest(L) -> None:
    """Refuse a results folder whose activations were computed from another manifest than the one
    beside it now (another dataset under the same id, or the dataset indexed again)."""
    import glob

    import h5py

    from .provenance import attr, manifest_sha256

    if not os.path.isfile(L.manifest):
        raise ValueError(f"{L.manifest} does not exist: the dataset of {L.res} is gone")
    shards = sorted(glob.glob(os.path.join(glob.escape(L.res), "activations", "*", "shard-*.h5")))
    if not shards:
        return
    with h5py.File(shards[0], "r") as f:
        made_from = attr(f, "manifest_sha256")
    if made_from and made_from != manifest_sha256(L.manifest):
        raise ValueError(f"{L.res} was computed from another manifest than {L.manifest} (another "
                         f"dataset under the same dataset.id, or the dataset indexed again since); "
                         f"rerun snakemake with this results folder's config")


def _prep_of(res: str):
    """The preprocessing a results folder was made with (from its layer table's input size and
    the model's spec where it is a built-in; the folder name is the model)."""
    from .inputs import Preprocessing
    from .models import MODELS

    import pandas as pd

    from .plan import Layout

    L = Layout.of(res)
    size = int(pd.read_parquet(L.layers_table)["input_h"].iat[0])
    spec = MODELS.get(L.model)
    resize = spec.resize_size if spec and spec.input_size == size else round(size / 0.875)
    return Preprocessing(resize, size)


def show(results: str | None, layer: str, unit: int) -> str:
    """The text `python -m unitscope show` prints: a unit's top-k rows, each box in network-input
    pixels and in the pixels of the original file, and the paths of its figure and gallery page."""
    import pandas as pd

    from .geometry import source_box

    L = _results(results, layer)
    path = L.topk(layer)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    top = pd.read_parquet(path)
    rows = top[top["unit"] == unit]
    if rows.empty:
        raise ValueError(f"layer {layer} has units 0..{top['unit'].max()}, not {unit}")
    manifest = pd.read_parquet(L.manifest)
    rows = rows.merge(manifest, on="image_id", how="left")
    prep = _prep_of(L.res)
    lines = [f"{layer} unit {unit}: top {len(rows)} images (boxes y0..y1, x0..x1: in the "
             f"{prep.input_size}×{prep.input_size} network input, and in the original file)"]
    for r in rows.itertuples():
        crop = None if pd.isna(r.crop_left) else (int(r.crop_left), int(r.crop_top),
                                                  int(r.crop_right), int(r.crop_bottom))
        sy0, sx0, sy1, sx1 = source_box((r.y0, r.x0, r.y1, r.x1), (int(r.width), int(r.height)),
                                        crop, prep.resize_size, prep.input_size)
        where = r.path if pd.isna(r.member) else f"{r.path} member {r.member}"
        lines.append(f"  #{r.rank}  image {r.image_id:<6} activation {r.activation:<10.4g} "
                     f"input y {r.y0}..{r.y1} x {r.x0}..{r.x1}  file y {sy0:.0f}..{sy1:.0f} "
                     f"x {sx0:.0f}..{sx1:.0f}  label {r.label}  {where}")
    for fig in (L.unit_grid(layer, unit), L.gallery_unit(layer, unit)):
        lines.append(("figure: " if fig.endswith(".png") else "gallery: ") + fig
                     + ("" if os.path.exists(fig) else " (not made: the unit is not shown)"))
    return "\n".join(lines)


def image(results: str | None, image_id: int, n: int = 5) -> str:
    """The text `python -m unitscope image` prints: per layer, the units that fire most on the
    image relative to their own maximum, with the box of each peak."""
    import glob

    import pandas as pd

    from .image_view import image_view

    if n < 1:
        raise ValueError(f"--top {n}: give a number of units per layer of 1 or more")
    L = _results(results)
    layers = pd.read_parquet(L.layers_table)
    manifest = pd.read_parquet(L.manifest)
    if image_id not in set(manifest["image_id"]):
        raise ValueError(f"image {image_id} is not in {L.manifest} (ids 0..{len(manifest) - 1})")
    paths = {}
    for layer in layers["layer"]:
        shards = sorted(glob.glob(os.path.join(glob.escape(os.path.dirname(L.activations(layer, 0))), "shard-*.h5")))
        paths[layer] = {"activations": shards, "units": L.units(layer), "rf": L.rf(layer)}
    view = image_view(layers, manifest, paths, [image_id], n)[image_id]
    meta = manifest.set_index("image_id").loc[image_id]
    lines = [f"image {image_id}: {meta['path']} (label {meta['label']})"]
    for layer, g in view.groupby("layer", sort=False):
        lines.append(f"  {layer}:")
        for r in g.itertuples():
            lines.append(f"    unit {r.unit:<5} {r.activation:<9.4g} {r.ratio:>5.0%} of its max  "
                         f"box y {r.y0}..{r.y1} x {r.x0}..{r.x1}")
    lines.append(f"gallery: {L.gallery}/images/{image_id:07d}.html")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from . import stages

    p = argparse.ArgumentParser(prog="python -m unitscope", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn in inspect.getmembers(stages, inspect.isfunction):
        if not name.startswith("_") and fn.__module__ == stages.__name__ and name != "layers":
            _add_stage(sub, name, fn)
    s = sub.add_parser("layers", help=layers_command.__doc__.splitlines()[0])
    _model_options(s)
    s.add_argument("--layers", nargs="+", help="aliases or module paths (default: every alias)")
    s.add_argument("--table", help="write layers.parquet here")
    s.add_argument("--boxes-out", help="write each layer's per-position boxes to DIR/<layer>.parquet")
    s.add_argument("--no-probe", action="store_true", help="skip the probe's check")
    s.add_argument("--tokens", default="patch", choices=("patch", "cls", "all"),
                   help="token layers: which tokens are the positions")
    s.add_argument("--layout", nargs="+", metavar="LAYER=LAYOUT",
                   help="nchw, nhwc or tokens, where a layer's fields cannot tell")
    s.set_defaults(run=layers_command)
    s = sub.add_parser("show", help="print one unit's top-k rows and the path of its figure")
    s.add_argument("--results", default=None, help="results/D/M (default: the only one there is)")
    s.add_argument("--layer", required=True)
    s.add_argument("--unit", type=int, required=True)
    s.set_defaults(run=lambda a: print(show(a.results, a.layer, a.unit)))
    s = sub.add_parser("image", help="print the units that fire most on one image, per layer")
    s.add_argument("--results", default=None, help="results/D/M (default: the only one there is)")
    s.add_argument("--image-id", type=int, required=True)
    s.add_argument("--top", type=int, default=5, help="units per layer")
    s.set_defaults(run=lambda a: print(image(a.results, a.image_id, a.top)))
    return p


def main(argv: list[str] | None = None) -> int:
    configure(sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except USER_ERRORS as e:
        log.error("%s: %s", args.command, one_line(e))
        if is_disk_full(e):
            exit_now(1)
        return 1
    return 0
