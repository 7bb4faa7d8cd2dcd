"""Samples to pictures: ``[-1, 1]`` float arrays to uint8, a square-ish PNG grid, .npy files
(torch-free; Pillow and numpy only). Files are written atomically and never overwritten
unless ``force``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from ddpm_export.checks import check_int
from ddpm_export.errors import BadInputError
from ddpm_export.files import atomic_file

#: the channel counts an image grid holds: grayscale and RGB
GRID_CHANNELS = (1, 3)

__all__ = ["GRID_CHANNELS", "grid_bytes", "grid_shape", "make_grid", "save_grid", "save_npy", "to_uint8", "write_array", "write_grid"]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """``[N, C, H, W]`` in ``[-1, 1]`` -> ``[N, H, W, C]`` uint8: ``round((x + 1) * 127.5)``, clipped.
    NaN and infinities are refused: no pixel value stands for them (NaN became 0, black)."""
    if images.ndim != 4:
        raise BadInputError(f"images must be [N, C, H, W], got shape {images.shape}")
    bad = int(images.size - np.count_nonzero(np.isfinite(images)))
    if bad:
        raise BadInputError(f"images hold {bad} NaN or infinite value(s) of {images.size}; no pixel value stands "
                            f"for them (keep the raw values with save_npy)")
    scaled = np.rint((images.astype(np.float64) + 1.0) * 127.5)
    return np.clip(scaled, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def grid_shape(n: int, columns: int | None = None) -> tuple[int, int]:
    """``(rows, columns)``: ``ceil(sqrt(n))`` columns unless given (an int >= 1), as many rows as needed."""
    if n < 1:
        raise BadInputError(f"need at least one image, got {n}")
    cols = math.ceil(math.sqrt(n)) if columns is None else check_int("columns", columns, 1, None, "an int >= 1")
    return math.ceil(n / cols), cols


def grid_bytes(n: int, shape: tuple[int, int, int], *, columns: int | None = None, padding: int = 2,
               scale: int = 1) -> int:
    """The memory :func:`make_grid` takes at its peak for ``n`` images of ``shape`` ``(C, H, W)``:
    the enlarged tiles and the canvas (``C`` bytes a pixel each) and, for RGB, Pillow's copy of
    the canvas (4 bytes a pixel) -- measured 2.0x the canvas for grayscale, 3.3x for RGB."""
    c, h, w = shape
    rows, cols = grid_shape(n, columns)
    pixels = (rows * (h * scale + padding) + padding) * (cols * (w * scale + padding) + padding)
    return n * c * h * w * scale * scale + pixels * c + (4 * pixels if c == 3 else 0)


def make_grid(images: np.ndarray, *, columns: int | None = None, padding: int = 2, scale: int = 1,
              background: int = 0) -> Image.Image:
    """A grid of ``[N, C, H, W]`` images in ``[-1, 1]``: grayscale (``L``) for 1 channel, ``RGB`` for 3.

    Tiles are ``scale`` x enlarged (nearest neighbour) and separated and framed by ``padding``
    pixels, so the picture is ``cols * (W * scale + padding) + padding`` wide (rows alike).
    """
    if images.ndim != 4 or images.shape[1] not in GRID_CHANNELS:
        raise BadInputError(f"images must be [N, 1 or 3, H, W], got shape {images.shape}")
    scale = check_int("scale", scale, 1, None, "an int >= 1")  # 2.5 drew tiles 2x
    padding = check_int("padding", padding, 0, None, "an int >= 0")
    background = check_int("background", background, 0, 255, "a gray level in [0, 255]")
    tiles = to_uint8(images)
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = tiles.shape
    rows, cols = grid_shape(n, columns)
    canvas = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), background, np.uint8)
    for i, tile in enumerate(tiles):
        r, q = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        canvas[y:y + h, x:x + w] = tile
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)  # uint8: mode L for 2-D, RGB for 3 channels


def write_grid(images: np.ndarray, path: str | Path, **grid_options: int) -> None:
    """Write :func:`make_grid` as a PNG to ``path`` (as is: see :func:`save_grid`)."""
    make_grid(images, **grid_options).save(path, format="PNG")


def write_array(array: np.ndarray, path: str | Path) -> None:
    """Write ``array`` with ``numpy.save`` to ``path`` (as is: see :func:`save_npy`)."""
    with open(path, "wb") as f:
        np.save(f, array)


def save_grid(images: np.ndarray, path: str | Path, *, force: bool = False, **grid_options: int) -> Path:
    """Write :func:`make_grid` as a PNG to ``path`` (atomic; refuses an existing file unless ``force``)."""
    path = Path(path)
    with atomic_file(path, force=force) as tmp:
        write_grid(images, tmp, **grid_options)
    return path


def save_npy(array: np.ndarray, path: str | Path, *, force: bool = False) -> Path:
    """Write ``array`` with ``numpy.save`` to ``path`` (atomic; refuses an existing file unless ``force``)."""
    path = Path(path)
    with atomic_file(path, force=force) as tmp:
        write_array(array, tmp)
    return path
