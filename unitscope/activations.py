"""Inference: one forward pass per batch captures every configured layer through forward hooks
(stopping after the deepest one) and keeps, per image and unit, the spatial maximum and where it
is. Per layer and shard an HDF5 file: `max` (N×C float32), `argmax_y`, `argmax_x` (N×C int32,
the first maximum in row-major order), `image_id` (N,)."""
from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import torch

from .atomic import atomic_path
from .models import ModelSpec, build_model, get_spec, resolve_layers
from .progress import Progress

log = logging.getLogger("unitscope")


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DATASETS = (("max", "float32"), ("argmax_y", "int32"), ("argmax_x", "int32"))  # per layer file


class _Done(Exception):
    """Raised by the last hook to stop the forward pass at the deepest requested layer."""


def spatial_max(fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (image, channel) of an N×C×H×W map: the maximum and the (y, x) of its first occurrence
    in row-major order (deterministic where a map has ties, e.g. all-zero ReLU maps)."""
    n, c, h, w = fmap.shape
    flat = fmap.reshape(n, c, h * w)
    values = flat.amax(dim=2)
    order = torch.arange(h * w, device=fmap.device, dtype=torch.int32)
    first = torch.where(flat == values.unsqueeze(2), order, h * w).amin(dim=2)
    return values, first // w, first % w


class LayerMaxima:
    """Forward hooks that reduce each wanted module's output to spatial max/argmax, and stop the
    forward pass once all have fired."""

    def __init__(self, model: torch.nn.Module, modules: dict[str, str]):
        self.results: dict[str, tuple[torch.Tensor, ...]] = {}
        named = dict(model.named_modules())
        self.handles = [named[m].register_forward_hook(self._hook(layer))
                        for layer, m in modules.items()]
        self.n = len(modules)

    def _hook(self, layer: str):
        def hook(module, inputs, output):
            self.results[layer] = spatial_max(output.float())
            if len(self.results) == self.n:
                raise _Done
        return hook

    def run(self, model: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
        self.results = {}
        try:
            model(x)
        except _Done:
            pass
        if len(self.results) != self.n:
            raise RuntimeError("some layers never ran in the forward pass")
        return self.results

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def pick_device(device: str) -> torch.device:
    """`auto` takes a GPU when one is present; `cuda` without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but torch sees no GPU; use auto or cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}; valid: auto, cpu, cuda")
    return torch.device(device)


def run_inference(inputs_path: str | os.PathLike, model_name: str, layers: list[str],
                  out_paths: list[str | os.PathLike], weights: str | None = "imagenet",
                  batch_size: int = 32, device: str = "auto", threads: int = 1,
                  precision: str = "fp32", spec: ModelSpec | None = None) -> int:
    """Write one activation file per layer for the images of one inputs shard; returns the
    number of images."""
    if len(layers) != len(out_paths):
        raise ValueError(f"{len(layers)} layers but {len(out_paths)} output paths")
    torch.set_num_threads(max(threads, 1))
    spec = spec or get_spec(model_name)
    modules = resolve_layers(model_name, layers, spec)
    model = build_model(model_name, weights, spec)
    return record_maxima(model, modules, spec.mean, spec.std, inputs_path,
                         dict(zip(layers, out_paths)), batch_size, device, precision)


def record_maxima(model: torch.nn.Module, modules: dict[str, str], mean, std,
                  inputs_path: str | os.PathLike, out_paths: dict[str, str | os.PathLike],
                  batch_size: int = 32, device: str = "auto", precision: str = "fp32") -> int:
    """The inference stage for any model: `modules` maps layer name -> module path, `mean` and
    `std` (0–255 scale) normalise the uint8 inputs, `out_paths` maps layer name -> file."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    layers = list(modules)
    dev = pick_device(device)
    model = model.to(dev).eval()
    if dev.type == "cpu" or precision != "fp32":
        # NHWC convolutions: faster on the CPU here (bench/run.py), and what tensor cores want
        # under bf16/fp16 autocast
        model = model.to(memory_format=torch.channels_last)
    mean = torch.tensor(mean, device=dev, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(std, device=dev, dtype=torch.float32).view(1, 3, 1, 1)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    autocast = (torch.autocast(dev.type, dtype=PRECISIONS[precision])
                if PRECISIONS[precision] is not None else contextlib.nullcontext())
    maxima = LayerMaxima(model, modules)
    with contextlib.ExitStack() as stack:
        stack.callback(maxima.close)
        f_in = stack.enter_context(h5py.File(inputs_path, "r"))
        images, image_ids = f_in["images"], f_in["image_id"][:]
        n = len(image_ids)
        outs = []
        for layer in layers:
            tmp = stack.enter_context(atomic_path(out_paths[layer]))
            f = stack.enter_context(h5py.File(tmp, "w"))
            f.create_dataset("image_id", data=image_ids)
            f.attrs.update(layer=layer, module=modules[layer])
            outs.append(f)
        pool = stack.enter_context(ThreadPoolExecutor(1))
        progress = Progress(n, f"activations {os.path.basename(str(inputs_path))}")
        starts = list(range(0, n, batch_size))

        def read(s: int) -> torch.Tensor:
            return torch.from_numpy(images[s:s + batch_size])

        pending = pool.submit(read, starts[0]) if starts else None
        for i, s in enumerate(starts):
            batch = pending.result()
            if i + 1 < len(starts):
                pending = pool.submit(read, starts[i + 1])  # read the next batch meanwhile
            if dev.type == "cuda":
                batch = batch.pin_memory().to(dev, non_blocking=True)
            x = batch.permute(0, 3, 1, 2).float().sub_(mean).div_(std)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), autocast:
                res = maxima.run(model, x)
            for f, layer in zip(outs, layers):
                values, ys, xs = (t.cpu().numpy() for t in res[layer])
                if s == 0:
                    for name, dt in DATASETS:
                        f.create_dataset(name, (n, values.shape[1]), dtype=dt)
                f["max"][s:s + len(values)] = values
                f["argmax_y"][s:s + len(values)] = ys
                f["argmax_x"][s:s + len(values)] = xs
            progress.update(len(batch))
        if n == 0:
            for f in outs:
                for name, dt in DATASETS:
                    f.create_dataset(name, (0, 0), dtype=dt)
    return n


def read_layer(paths: list[str | os.PathLike]) -> dict[str, np.ndarray]:
    """All rows of a layer's activation files, concatenated (for tests and small data)."""
    parts = {k: [] for k in ("image_id", "max", "argmax_y", "argmax_x")}
    for p in paths:
        with h5py.File(p, "r") as f:
            if len(f["image_id"]) == 0:
                continue
            for k in parts:
                parts[k].append(f[k][:])
    return {k: np.concatenate(v) for k, v in parts.items()}
