"""The ERF heat map as a PNG, with Pillow only (no matplotlib needed)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ddpm_export.analysis.erf import ErfResult

__all__ = ["erf_image"]

# black -> purple -> orange -> light yellow: a perceptually ordered ramp (like matplotlib's "inferno")
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def _colour(values: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] uint8 along the ramp."""
    pos = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.minimum(np.floor(pos).astype(int), len(_RAMP) - 2)
    frac = (pos - lo)[..., None]
    return np.round(_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).astype(np.uint8)


def erf_image(result: ErfResult, scale: int = 16) -> Image.Image:
    """The map, normalised by its maximum (square-root scale so the tails show), each pixel
    ``scale`` x ``scale``; a white square marks the 95%-mass window, a cyan one the theoretical RF
    (clipped to the image)."""
    m = result.map / result.map.max()
    img = Image.fromarray(_colour(np.sqrt(m))).resize((m.shape[1] * scale, m.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    cy, cx = result.centre
    for half, colour in ((result.radius, (255, 255, 255)), ((result.theoretical_rf - 1) / 2, (0, 255, 255))):
        box = [(cx - half) * scale, (cy - half) * scale, (cx + half + 1) * scale - 1, (cy + half + 1) * scale - 1]
        draw.rectangle([max(box[0], 0), max(box[1], 0), min(box[2], img.width - 1), min(box[3], img.height - 1)],
                       outline=colour, width=2)
    return img
