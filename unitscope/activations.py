"""Inference: one forward pass per batch captures every configured layer through forward hooks
(the first call of each module; the pass stops after the deepest one) and keeps, per image and
unit, what the later stages need — never the full maps: one file per layer and shard, in the
format activation_file.py describes, written while the images stream through."""
from __future__ import annotations

import contextlib
import logging
import os
import time

import h5py
import numpy as np
import pandas as pd
import torch

from .activation_file import BYTES_PER_UNIT, DATASETS
from .atomic import atomic_path, check_free_space
from .hooks import FirstCalls
from .inputs import Preprocessing, decoded_batches, shard_rows
from .progress import Progress
from .provenance import Digest, manifest_sha256, open_checked, stamp

log = logging.getLogger("unitscope")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def spatial_stats(fmap: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per (image, channel) of an N×C×H×W map: maximum, minimum and the (y, x) of their first
    occurrence in row-major order (torch.max/min along a dimension return the first; ties are
    common, e.g. all-zero ReLU maps), and the spatial mean."""
    n, c, h, w = fmap.shape
    flat = fmap.reshape(n, c, h * w)
    out = {"mean": flat.mean(dim=2)}
    for name, (values, first) in (("max", flat.max(dim=2)), ("min", flat.min(dim=2))):
        out[name], out[f"arg{name}_y"], out[f"arg{name}_x"] = values, first // w, first % w
    return out


def pick_device(device: str) -> torch.device:
    """`auto` takes a GPU when one is present; `cuda` without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but torch sees no GPU; use auto or cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}; valid: auto, cpu, cuda")
    return torch.device(device)


def stored_batches(path: str | os.PathLike, shard: int, shards: int, manifest_sha: str,
                   prep: Preprocessing, batch_size: int, digest: Digest):
    """(image_ids, uint8 batch) from an inputs-store shard, checked to be that shard of this
    manifest, its content digest recomputed as it is read (checked after the last batch)."""
    want = {"shard": shard, "shards": shards, "manifest_sha256": manifest_sha,
            "input_size": prep.input_size, "resize_size": prep.resize_size,
            "resample": prep.resample, "decode": prep.decode}
    with open_checked(path, "inputs", want) as f:
        ids = f["image_id"][:]
        digest.update("image_id", ids)
        images = f["images"]
        for s in range(0, len(ids), batch_size):
            batch = images[s:s + batch_size]
            digest.update("images", batch)
            yield ids[s:s + batch_size], batch
        if digest.hexdigest() != f.attrs["content_sha"]:
            from .provenance import StaleFileError

            raise StaleFileError(path, "its images are not the ones it was written with")


def run_inference(manifest_path: str | os.PathLike, model_cfg: dict, layers: list[str],
                  out_paths: list[str | os.PathLike], shard: int = 0, shards: int = 1,
                  inputs_path: str | os.PathLike | None = None, batch_size: int = 32,
                  device: str = "auto", threads: int = 1, precision: str = "fp32",
                  model_key: str = "") -> int:
    """Write one activation file per layer for the images of one shard, decoded from their
    files (stream) or read from an inputs-store shard; returns the number of images."""
    from .models import ModelConfig, batch_limit, build_model, resolve_layers

    if len(layers) != len(out_paths):
        raise ValueError(f"{len(layers)} layers but {len(out_paths)} output paths")
    torch.set_num_threads(max(threads, 1))
    cfg = ModelConfig.from_dict(model_cfg)
    spec = cfg.spec()
    model = build_model(spec, cfg.weights, cfg.seed)
    modules = resolve_layers(spec, layers, model=model)
    if batch_limit(model, batch_size) < batch_size:
        log.warning("the export file takes batches of %d only (exported without a dynamic batch "
                    "dimension); running batches of that size", batch_limit(model, batch_size))
        batch_size = batch_limit(model, batch_size)
    prep = Preprocessing.of(spec)
    manifest_sha = manifest_sha256(manifest_path)
    rows = shard_rows(pd.read_parquet(manifest_path), shard, shards)
    if inputs_path:
        source_digest = Digest()
        batches = stored_batches(inputs_path, shard, shards, manifest_sha, prep, batch_size,
                                 source_digest)
        source = "store"
    else:
        # on a GPU the CPUs decode the next batches while it computes; on the CPU they take
        # turns with the network, which needs every core
        ahead = 2 if pick_device(device).type == "cuda" else 0
        batches = decoded_batches(rows, prep, batch_size, workers=max(threads, 1), prefetch=ahead)
        source = "stream"
    meta = {"shard": shard, "shards": shards, "manifest_sha256": manifest_sha,
            "model_key": model_key, "precision": precision, "source": source}
    return record_maxima(model, modules, spec.mean, spec.std, batches, len(rows),
                         dict(zip(layers, out_paths)), device, precision, meta,
                         first_id=int(rows["image_id"].iloc[0]) if len(rows) else -1,
                         views=cfg.layer_views())


def record_maxima(model: torch.nn.Module, modules: dict[str, str], mean, std, batches,
                  n: int, out_paths: dict[str, str | os.PathLike], device: str = "auto",
                  precision: str = "fp32", meta: dict | None = None, first_id: int = 0,
                  views: dict | None = None) -> int:
    """The inference stage for any model: `modules` maps layer name -> module path, `batches`
    yields (image_ids, N×H×W×3 uint8), `mean` and `std` (0–255 scale) normalise them, `out_paths`
    maps layer name -> file; `views` (layer -> LayerView) reads layers that are not N×C×H×W."""
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
    outputs: dict[str, torch.Tensor] = {}
    digests = {layer: Digest() for layer in layers}
    waited = computed = forward = 0.0
    with contextlib.ExitStack() as stack:
        calls = stack.enter_context(FirstCalls(model, modules, outputs.__setitem__, views=views))
        files = {}
        for layer in layers:
            tmp = stack.enter_context(atomic_path(out_paths[layer]))
            files[layer] = stack.enter_context(h5py.File(tmp, "w"))
        progress = Progress(n, f"activations of {n} images")
        row = 0
        ids_all = []
        clock = time.perf_counter()
        for ids, batch in batches:
            now = time.perf_counter()
            waited += now - clock
            t = torch.from_numpy(np.ascontiguousarray(batch))
            if dev.type == "cuda":
                t = t.pin_memory().to(dev, non_blocking=True)
            x = t.permute(0, 3, 1, 2).float().sub_(mean).div_(std)
            x = x.contiguous(memory_format=torch.channels_last)
            outputs.clear()
            with torch.inference_mode(), autocast:
                started = time.perf_counter()
                calls.run(model, x)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                forward += time.perf_counter() - started
                results = {layer: spatial_stats(outputs[layer].float()) for layer in layers}
            outputs.clear()
            for layer in layers:
                stats = {k: v.cpu().numpy() for k, v in results[layer].items()}
                f = files[layer]
                if row == 0:
                    c = stats["max"].shape[1]
                    for layer_ in [layer]:
                        check_free_space(out_paths[layer_], n * (c * BYTES_PER_UNIT + 8))
                    for name, dt in DATASETS.items():
                        f.create_dataset(name, (n, c), dtype=dt, chunks=(min(max(n, 1), 1024), c))
                for name, dt in DATASETS.items():
                    values = stats[name].astype(dt)
                    f[name][row:row + len(ids)] = values
                    digests[layer].update(name, values)
            ids_all.append(np.asarray(ids, np.int64))
            row += len(ids)
            clock = time.perf_counter()
            computed += clock - now
            progress.update(len(ids))
        if row != n:
            raise RuntimeError(f"expected {n} images in the shard, got {row}")
        ids = np.concatenate(ids_all) if ids_all else np.zeros(0, np.int64)
        for layer in layers:
            f = files[layer]
            if n == 0:
                for name, dt in DATASETS.items():
                    f.create_dataset(name, (0, 0), dtype=dt)
            f.create_dataset("image_id", data=ids)
            digests[layer].update("image_id", ids)
            stamp(f, "activations", layer=layer, module=modules[layer], n_images=n,
                  first_id=int(ids[0]) if n else -1, content_sha=digests[layer].hexdigest(),
                  **(meta or {}))
    busy = computed / max(computed + waited, 1e-9)
    log.info("activations: %d images; the %s was busy %.0f%% of the time (%.1f s computing, "
             "%.1f s waiting for images)", n, dev.type.upper() if dev.type == "cuda" else "model",
             100 * busy, computed, waited)
    log.info("timing: forward %.3f s, statistics and writing %.3f s, waiting for images %.3f s",
             forward, computed - forward, waited)
    return n
