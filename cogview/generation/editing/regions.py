"""Where an edit samples: pixel masks, boxes, prefixes, strengths and canvases -> code cells.

Every region ends as a ``[g, g]`` bool grid over the image tokenizer's codes (True = sample this
code); outpainting also moves the image's codes on the canvas. Pixel coordinates are those of the
input image (masks, boxes) or of the model's square output (shifts, pads); one code covers a
``cell = image_size // grid_size`` pixel square, and the docs (docs/editing.md) draw the mapping.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from cogview.checks import finite_float, positive_int
from cogview.generation.batching import image_seed


def box_mask(box: Any, size: tuple[int, int]) -> np.ndarray:
    """``(left, top, right, bottom)`` pixels (right/bottom exclusive, as PIL) -> ``[H, W]`` bool mask."""
    w, h = size
    try:
        left, top, right, bottom = (int(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"box must be four integers (left, top, right, bottom), got {box!r}") from None
    if not (0 <= left < right <= w and 0 <= top < bottom <= h):
        raise ValueError(
            f"box {(left, top, right, bottom)} must satisfy 0 <= left < right <= {w} and 0 <= top < bottom <= {h} "
            "(the image's size)"
        )
    out = np.zeros((h, w), dtype=bool)
    out[top:bottom, left:right] = True
    return out


def pixel_mask(mask: Any, size: tuple[int, int]) -> np.ndarray:
    """A PIL image (any mode; non-zero = regenerate) or an array ``[H, W]`` -> bool ``[H, W]``."""
    w, h = size
    if isinstance(mask, Image.Image):
        if mask.size != (w, h):
            raise ValueError(
                f"mask is {mask.size[0]}x{mask.size[1]} pixels, the image {w}x{h}: give a mask of its size"
            )
        return np.asarray(mask.convert("L")) > 0
    array = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
    if array.ndim != 2 or array.shape != (h, w):
        raise ValueError(f"mask has shape {array.shape}, the image is {h}x{w} (rows x columns): give [H, W]")
    if not (array.dtype == bool or np.issubdtype(array.dtype, np.number)):
        raise ValueError(f"mask must be bool or numeric, got dtype {array.dtype}")
    return array != 0


def grid_mask(mask: np.ndarray, image_size: int, grid_size: int) -> torch.Tensor:
    """Pixel mask of the input image -> ``[g, g]`` bool: a code is regenerated if ANY pixel of its cell is.

    The mask follows the image through the same resize and centre crop (area-averaged, so a masked
    pixel leaves a non-zero value wherever it lands). "Any" rather than "most": a VQ code's
    receptive field covers its whole cell, so a half-kept cell would keep stale content in the hole.
    """
    m = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    if m.size != (image_size, image_size):
        w, h = m.size
        scale = image_size / min(w, h)
        nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        m = m.resize((nw, nh), Image.Resampling.BOX)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        m = m.crop((left, top, left + image_size, top + image_size))
    cell = image_size // grid_size
    pixels = torch.from_numpy(np.asarray(m) > 0)  # [S, S]
    return pixels.view(grid_size, cell, grid_size, cell).any(dim=3).any(dim=1)  # [g, g]


def grow_grid(grid: torch.Tensor, cells: int) -> torch.Tensor:
    """``grid`` dilated by ``cells`` code cells in every direction (8-connected, clipped to the grid)."""
    if cells < 0:
        raise ValueError(f"grow={cells} must be >= 0 code cells")
    if cells == 0:
        return grid
    x = grid.float()[None, None]  # [1, 1, g, g]
    return torch.nn.functional.max_pool2d(x, 2 * cells + 1, stride=1, padding=cells)[0, 0] > 0


def prefix_grid(prefix: Any, grid_size: int) -> torch.Tensor:
    """Completion: keep the first ``prefix`` codes in raster order, regenerate the rest."""
    n = grid_size * grid_size
    prefix = positive_int("prefix", prefix)
    if prefix >= n:
        raise ValueError(
            f"prefix={prefix} keeps the whole {grid_size}x{grid_size} code grid: keep 1..{n - 1} codes"
        )
    out = torch.zeros(n, dtype=torch.bool)
    out[prefix:] = True
    return out.view(grid_size, grid_size)


def rows_grid(rows: Any, grid_size: int) -> torch.Tensor:
    """Completion: keep the first ``rows`` code rows, regenerate the rest."""
    rows = positive_int("rows", rows)
    if rows >= grid_size:
        raise ValueError(
            f"rows={rows} keeps the whole {grid_size}x{grid_size} code grid: keep 1..{grid_size - 1}"
        )
    return prefix_grid(rows * grid_size, grid_size)


def strength_grid(strength: Any, grid_size: int, seed: int) -> torch.Tensor:
    """Variations: a seeded random ``strength`` fraction of the codes (at least one) to re-sample."""
    strength = finite_float("strength", strength)
    if not 0 < strength <= 1:
        raise ValueError(f"strength={strength} must lie in (0, 1]: the fraction of codes to re-sample")
    n = grid_size * grid_size
    k = max(1, round(strength * n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(image_seed(seed, -1)))
    out = torch.zeros(n, dtype=torch.bool)
    out[order[:k]] = True
    return out.view(grid_size, grid_size)


# --- outpainting -------------------------------------------------------------------------------


def to_cells(pixels: Any, cell: int, name: str) -> int:
    """Pixels -> whole code cells, to the nearest (halves away from zero, so +-3 px is +-2 cells of 2 px)."""
    if isinstance(pixels, bool) or not isinstance(pixels, (int, np.integer)):
        raise ValueError(f"{name} must be whole pixels (an int), got {pixels!r}")
    return int(math.copysign(math.floor(abs(int(pixels)) / cell + 0.5), pixels))


def four_ints(value: Any, name: str) -> tuple[int, int, int, int]:
    """One int (every side) or ``(left, top, right, bottom)``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),) * 4  # type: ignore[return-value]
    try:
        sides = tuple(value)
    except TypeError:
        sides = ()
    if len(sides) != 4:
        raise ValueError(f"{name} must be one int or four (left, top, right, bottom), got {value!r}")
    return sides  # type: ignore[return-value]


def shift_canvas(codes: torch.Tensor, shift: Any, cell: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move ``[g, g]`` codes by ``shift=(dx, dy)`` pixels (right and down positive), rounded to cells.

    Returns the canvas codes (0 where nothing is known) and the ``[g, g]`` grid to sample: the
    cells the image left. The kept codes are the image's own, moved whole, so they decode as before.
    """
    try:
        dx, dy = shift
    except (TypeError, ValueError):
        raise ValueError(f"shift must be two ints (dx, dy) in pixels, got {shift!r}") from None
    g = codes.shape[-1]
    cx, cy = to_cells(dx, cell, "shift dx"), to_cells(dy, cell, "shift dy")
    if cx == cy == 0:
        raise ValueError(
            f"shift {(dx, dy)} px moves the image less than half a code cell ({cell} px): nothing to outpaint"
        )
    if abs(cx) >= g or abs(cy) >= g:
        raise ValueError(
            f"shift {(dx, dy)} px moves the whole image out of the {g * cell} px canvas: keep |dx|, |dy| "
            f"below {g * cell - cell // 2} px"
        )
    canvas = torch.zeros_like(codes)  # [g, g]
    known = torch.zeros(g, g, dtype=torch.bool)
    dst = slice(max(0, cy), g + min(0, cy)), slice(max(0, cx), g + min(0, cx))
    src = slice(max(0, -cy), g + min(0, -cy)), slice(max(0, -cx), g + min(0, -cx))
    canvas[dst] = codes[src]
    known[dst] = True
    return canvas, ~known


def pad_canvas(
    image: Image.Image, pad: Any, image_size: int, grid_size: int
) -> tuple[Image.Image, torch.Tensor]:
    """Shrink ``image`` into the model's square canvas, ``pad=(left, top, right, bottom)`` pixels
    (or one int) from its edges, rounded to whole code cells.

    The image is resized and centre-cropped to fill the inner box (its aspect kept); the border is
    filled by repeating the image's edge pixels, so the codes beside it are encoded from a plain
    continuation rather than a hard frame. Returns the canvas image and the ``[g, g]`` grid to
    sample (the border cells).
    """
    cell = image_size // grid_size
    sides = four_ints(pad, "pad")
    left, top, right, bottom = (to_cells(v, cell, "pad") for v in sides)
    if min(left, top, right, bottom) < 0:
        raise ValueError(f"pad {sides} must be >= 0 pixels on every side")
    if left + top + right + bottom == 0:
        raise ValueError(
            f"pad {sides} px is less than half a code cell ({cell} px) on every side: nothing to outpaint"
        )
    if left + right >= grid_size or top + bottom >= grid_size:
        raise ValueError(
            f"pad {sides} px leaves no room for the image in the {image_size} px canvas: keep left + right "
            f"and top + bottom below {image_size - cell} px"
        )
    w, h = (grid_size - left - right) * cell, (grid_size - top - bottom) * cell
    inner = np.asarray(ImageOps.fit(image.convert("RGB"), (w, h), Image.Resampling.BICUBIC))  # [h, w, 3]
    widths = ((top * cell, bottom * cell), (left * cell, right * cell), (0, 0))
    canvas = Image.fromarray(np.pad(inner, widths, mode="edge"))
    regen = torch.ones(grid_size, grid_size, dtype=torch.bool)
    regen[top : grid_size - bottom, left : grid_size - right] = False
    return canvas, regen
