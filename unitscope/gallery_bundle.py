"""The whole gallery as one folder, for Snakemake's report (`report(directory(...),
htmlindex="index.html")`): the index, its style, inputs and image pages, every layer's folder,
and the first layer's filters figure beside the index, so that one report file carries the whole
result. Files are hard links where the file system allows (no second copy on disk)."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .atomic import atomic_path

# what the index links outside the gallery: the filters figure beside it, the comparisons' pages
FILTERS_LINK = 'href="../filters.png"'
COMPARE_LINK = re.compile(r'<a href="\.\./\.\./compare/[^"]*">([^<]*)</a>')


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def _tree(src: Path, dst: Path) -> int:
    n = 0
    for path in sorted(src.rglob("*")):
        if path.is_file():
            _place(path, dst / path.relative_to(src))
            n += 1
    return n


def bundle_gallery(index: str, style: str, inputs_dir: str, images_dir: str, layers: list[str],
                   filters: str | None, out: str | os.PathLike) -> int:
    """Copy the gallery into `out` with the index's outside links made inside ones (the filters
    figure is copied beside the index; a comparison, which the report shows on its own, is named
    rather than linked). Returns the number of files."""
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        html = Path(index).read_text(encoding="utf-8")
        if filters:
            _place(Path(filters), tmp / "filters.png")
            html = html.replace(FILTERS_LINK, 'href="filters.png"')
        html = COMPARE_LINK.sub(r"\1 (the report's Comparisons)", html)
        (tmp / "index.html").write_text(html, encoding="utf-8")
        _place(Path(style), tmp / "style.css")
        n = 2 + bool(filters)
        n += _tree(Path(inputs_dir), tmp / "inputs") + _tree(Path(images_dir), tmp / "images")
        for layer in layers:
            n += _tree(Path(layer), tmp / Path(layer).name)
    return n
