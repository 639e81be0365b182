"""How `dype generate` shows and stores a render: tqdm bars, the side-by-side composite, the PNG, timings."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo


@contextmanager
def tqdm_progress(desc: str) -> Iterator[Callable[[int, int], None]]:
    """A `progress(done, total)` callback drawing a tqdm bar on stderr (opened on the first call)."""
    from tqdm.auto import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, leave=True)
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def _label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1, or built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def side_by_side(images: list[Image.Image], labels: list[str], gap: int = 8) -> Image.Image:
    """Panels left to right on a white canvas, each under a band with its label.

    Returns:
        RGB image of size (Σ widths + gap·(n−1), band + max height); panel i starts at
        x = Σ_{j<i} (width_j + gap), y = band.
    """
    if len(images) != len(labels) or not images:
        raise ValueError(f"images and labels must be non-empty and of equal length, got {len(images)}, {len(labels)}")
    height = max(image.height for image in images)
    font = _label_font(max(12, height // 32))
    band = max(24, height // 16)
    width = sum(image.width for image in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, band + height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for image, label in zip(images, labels, strict=True):
        canvas.paste(image.convert("RGB"), (x, band))
        draw.text((x + image.width // 2, band // 2), label, fill="black", font=font, anchor="mm")
        x += image.width + gap
    return canvas


def png_info(parameters: dict[str, Any]) -> PngInfo:
    """One text chunk per parameter, plus `parameters` with all of them as JSON."""
    info = PngInfo()
    for key, value in parameters.items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    info.add_text("parameters", json.dumps(parameters, ensure_ascii=False))
    return info


def write_png(image: Image.Image, path: Path, parameters: dict[str, Any]) -> Path:
    """Save `image` as a PNG at `path` (missing folders created) with `parameters` in its text chunks.

    The metadata is built before anything touches the disk, and the file is written next to `path` and
    renamed into place: a failed write (a full disk, say) leaves no truncated PNG and an older `path` intact.
    """
    info = png_info(parameters)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        image.save(partial, format="PNG", pnginfo=info)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def format_timings(timings: dict[str, float]) -> str:
    """`timings: load 0.11 s, encode 0.02 s, ... (total 0.72 s)`."""
    phases = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items())
    return f"timings: {phases} (total {sum(timings.values()):.2f} s)"
