"""The layer table: for each configured layer, its output shape and the exact receptive field of
one unit, checked against a gradient probe. It answers "how big is a unit's patch in layer L".

Columns (`layers.parquet`): layer, module, channels, height, width, units (= channels),
activations (= C×H×W), rf_size, rf_stride, rf_offset (rows; input-pixel centre of position 0,
pixel i spans [i, i+1)), rf_start (first input row seen by position 0), and the same four for
columns as rf_size_x, rf_stride_x, rf_offset_x, rf_start_x."""
from __future__ import annotations

import logging
import os

import pandas as pd

from .atomic import atomic_path
from .geometry import ReceptiveField, UnknownReceptiveField
from .models import ModelSpec, build_model, get_spec, resolve_layers

log = logging.getLogger("unitscope")


def layer_table(model_name: str, layers: list[str], probe: bool = True,
                spec: ModelSpec | None = None) -> pd.DataFrame:
    """The table for `layers` (aliases or module paths) of a model; needs no data."""
    spec = spec or get_spec(model_name)
    return model_layer_table(build_model(model_name, weights=None, spec=spec),
                             resolve_layers(model_name, layers, spec),
                             (spec.input_size, spec.input_size), probe)


def model_layer_table(model, modules: dict[str, str], input_size: tuple[int, int],
                      probe: bool = True) -> pd.DataFrame:
    """The table for any model: `modules` maps layer name -> module path. The analytic field of
    every layer is checked against the gradient probe (unless `probe` is False); where the walk
    cannot follow a layer, the probe's answer is used."""
    from .receptive_field import check_against_probe, probe_receptive_field, trace_layers

    fields, shapes = trace_layers(model, list(modules.values()), input_size)  # one forward pass
    rows = []
    for layer, module in modules.items():
        c, h, w = shapes[module]
        rf = fields[module]
        if isinstance(rf, str):
            log.warning("layer %s: analytic walk stopped (%s); using the gradient probe", layer, rf)
            try:
                rf = probe_receptive_field(model, module, input_size, (h, w))
            except UnknownReceptiveField as e:
                raise ValueError(f"layer {layer}: receptive field unknown ({rf}; {e})") from None
        elif probe:
            check_against_probe(model, module, rf, input_size, (h, w))
        rows.append(_row(layer, module, (c, h, w), rf))
    return pd.DataFrame(rows)


def _row(layer: str, module: str, shape: tuple[int, int, int], rf: ReceptiveField) -> dict:
    c, h, w = shape
    return {"layer": layer, "module": module, "channels": c, "height": h, "width": w,
            "units": c, "activations": c * h * w,
            "rf_size": rf.y.size, "rf_stride": rf.y.stride, "rf_offset": rf.y.offset,
            "rf_start": rf.y.start,
            "rf_size_x": rf.x.size, "rf_stride_x": rf.x.stride, "rf_offset_x": rf.x.offset,
            "rf_start_x": rf.x.start}


def format_table(table: pd.DataFrame) -> str:
    """The table as a human reads it: name, output C×H×W, units, RF size/stride/offset."""
    lines = [f"{'layer':<12} {'module':<16} {'output C×H×W':>16} {'units':>6} "
             f"{'RF size':>9} {'stride':>6} {'offset':>7}"]
    for r in table.itertuples():
        size = f"{r.rf_size}" if r.rf_size == r.rf_size_x else f"{r.rf_size}×{r.rf_size_x}"
        lines.append(f"{r.layer:<12} {r.module:<16} {f'{r.channels}×{r.height}×{r.width}':>16} "
                     f"{r.units:>6} {size + ' px':>9} {r.rf_stride:>6} {r.rf_offset:>7.1f}")
    return "\n".join(lines)


def write_layer_table(table: pd.DataFrame, out_path: str | os.PathLike) -> None:
    """Log and write the layer table."""
    log.info("layer table (receptive fields in input pixels):\n%s", format_table(table))
    with atomic_path(out_path) as tmp:
        table.to_parquet(tmp, index=False)
