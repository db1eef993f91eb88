"""The first layer's filters (Zeiler & Fergus 2014, Fig. 6): the weights of the first convolution
that reads the image, each filter drawn as an RGB tile, and the statistics that diagnose it.

Table `filters.parquet`, one row per filter: `filter` (its output channel), `norm` (L2 norm of
its weights), `high_freq` (the share of its spectral energy above half the Nyquist frequency:
|f| > 0.25 cycles per pixel in the 2-D DFT of the kernel, summed over input channels; 0 for a
constant filter, near 1 for a checkerboard — the paper's "aliasing" of AlexNet's stride-4 11×11
filters), `dead` (its norm below 1% of the median norm). Attributes of the module, kernel and
stride ride along as columns `module`, `kernel`, `stride`, `in_channels`."""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from .atomic import atomic_path

DEAD_SHARE = 0.01          # a filter whose norm is below 1% of the median norm is dead
HALF_NYQUIST = 0.25        # cycles per pixel
ALIASED = 0.5              # drawn with a frame: more than half its energy above half Nyquist
TILE_PX = 56               # each filter enlarged to about this size (nearest: the weights stay visible)
DEAD_MARK = (220, 30, 30)
ALIASED_MARK = (240, 150, 0)


def high_frequency_share(kernel: np.ndarray) -> float:
    """The share of a C×kh×kw kernel's spectral energy above half the Nyquist frequency (its
    own k×k DFT, not zero-padded: a constant kernel has all its energy at 0)."""
    spectrum = np.abs(np.fft.fft2(kernel.astype(np.float64), axes=(-2, -1))) ** 2
    energy = spectrum.sum(axis=0) if spectrum.ndim == 3 else spectrum
    fy = np.fft.fftfreq(kernel.shape[-2])[:, None]
    fx = np.fft.fftfreq(kernel.shape[-1])[None, :]
    total = energy.sum()
    return float(energy[np.hypot(fy, fx) > HALF_NYQUIST].sum() / total) if total > 0 else 0.0


def filter_stats(weights: np.ndarray) -> pd.DataFrame:
    """Per filter of an N×C×kh×kw weight array: filter, norm, high_freq, dead."""
    w = np.asarray(weights, np.float64)
    norms = np.sqrt((w.reshape(len(w), int(np.prod(w.shape[1:]))) ** 2).sum(axis=1))
    median = float(np.median(norms)) if len(norms) else 0.0
    return pd.DataFrame({"filter": np.arange(len(w)), "norm": norms,
                         "high_freq": [high_frequency_share(k) for k in w],
                         "dead": norms < DEAD_SHARE * median})


def first_convolution(model) -> tuple[str, object] | None:
    """(module path, module) of the first 2-D convolution in the network's module order, None
    where it has none."""
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    return None


def filter_tile(kernel: np.ndarray) -> np.ndarray:
    """A C×kh×kw kernel as a kh×kw×3 uint8 image, normalised to its own range (RGB where C is 3,
    grey otherwise: the mean over its input channels)."""
    k = kernel if kernel.shape[0] == 3 else np.repeat(kernel.mean(axis=0, keepdims=True), 3, axis=0)
    lo, hi = float(k.min()), float(k.max())
    if hi <= lo:
        return np.full((*k.shape[1:], 3), 128, np.uint8)
    return np.round((k - lo) / (hi - lo) * 255).astype(np.uint8).transpose(1, 2, 0)


def draw_filters(weights: np.ndarray, stats: pd.DataFrame, out_path: str | os.PathLike,
                 title: str, module: str, stride: tuple[int, int]) -> None:
    """Every filter as a tile in rows (the paper's arrangement), dead ones crossed out in red,
    high-frequency ones framed in orange, and a header that says what a tile is."""
    from PIL import Image, ImageDraw

    from .grids import BACKGROUND, _header_height, _text_width, draw_header

    n, c, kh, kw = weights.shape
    scale = max(1, (TILE_PX if n > 64 else 3 * TILE_PX // 2) // max(kh, kw))
    tw, th = kw * scale, kh * scale
    cols = min(n, 16 if n > 48 else 8) or 1
    rows = math.ceil(n / cols)
    dead, aliased = int(stats["dead"].sum()), int((stats["high_freq"] > ALIASED).sum())
    header = [f"{title}: the first convolution's filters ({module}; Zeiler & Fergus Fig. 6)",
              f"{n} filters of {kh}x{kw} over {c} input channel{'s' if c != 1 else ''}, stride "
              f"{stride[0]}: each tile is one filter's weights "
              + ("as RGB" if c == 3 else "(mean over its inputs, grey)")
              + f", enlarged {scale}x, normalised to its own range (darkest = its lowest weight, "
              f"brightest = its highest)",
              f"dead (norm < {DEAD_SHARE:.0%} of the median): {dead}, crossed out in red",
              f"high-frequency (> {ALIASED:.0%} of its energy above half the Nyquist frequency, "
              f"the aliasing the paper saw): {aliased}, framed in orange"
              + (f" (a {kh}x{kw} kernel's own DFT has frequencies 0 and "
                 f"{', '.join(f'{f:.2f}' for f in sorted(set(np.abs(np.fft.fftfreq(min(kh, kw))))) if f)} "
                 f"cycles/px only)" if min(kh, kw) <= 5 else ""),
              "norm and high-frequency share per filter: filters.parquet"]
    gap = 8
    top = _header_height(header) + 6
    width = max(cols * (tw + gap) + gap + 20, _text_width(header) + 28)
    fig = Image.new("RGB", (width, top + rows * (th + gap) + gap + 10), BACKGROUND)
    d = ImageDraw.Draw(fig)
    draw_header(fig, header, 14, 6)
    for i in range(n):
        r, col = divmod(i, cols)
        x, y = 14 + col * (tw + gap), top + r * (th + gap)
        tile = Image.fromarray(filter_tile(weights[i])).resize((tw, th), Image.NEAREST)
        fig.paste(tile, (x, y))
        row = stats.iloc[i]
        if row["dead"]:
            d.line([x, y, x + tw - 1, y + th - 1], fill=DEAD_MARK, width=2)
            d.line([x, y + th - 1, x + tw - 1, y], fill=DEAD_MARK, width=2)
        elif row["high_freq"] > ALIASED:
            d.rectangle([x - 2, y - 2, x + tw + 1, y + th + 1], outline=ALIASED_MARK, width=2)
    with atomic_path(out_path) as tmp:
        fig.save(tmp, format="PNG")


def write_filters(model, table_out: str | os.PathLike, figure_out: str | os.PathLike,
                  title: str) -> pd.DataFrame:
    """The table and the figure of the network's first convolution (an empty table and a
    figure that says so where it has none)."""
    found = first_convolution(model)
    if found is None:
        stats = filter_stats(np.zeros((0, 1, 1, 1)))
        from PIL import Image, ImageDraw

        from .grids import BACKGROUND, TEXT, _font

        fig = Image.new("RGB", (640, 40), BACKGROUND)
        ImageDraw.Draw(fig).text((10, 12), f"{title}: no 2-D convolution in this network, no "
                                 f"filters to show", fill=TEXT, font=_font(14))
        with atomic_path(figure_out) as tmp:
            fig.save(tmp, format="PNG")
        module, conv = "", None
    else:
        module, conv = found
        weights = conv.weight.detach().float().cpu().numpy()
        stats = filter_stats(weights)
        draw_filters(weights, stats, figure_out, title, module, tuple(conv.stride))
    out = stats.assign(module=module,
                       kernel=f"{conv.kernel_size[0]}x{conv.kernel_size[1]}" if conv is not None else "",
                       stride=int(conv.stride[0]) if conv is not None else 0,
                       in_channels=int(conv.in_channels) if conv is not None else 0)
    with atomic_path(table_out) as tmp:
        out.to_parquet(tmp, index=False)
    return out
