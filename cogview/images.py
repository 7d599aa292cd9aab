"""Image <-> tensor conversion, CogView's resize-and-crop preprocessing, grids and PSNR.

Kept free of model logic so that tokenizers, pipelines, benchmarks and the CLI share one
definition of "pixels in [0, 1], shape (B, 3, H, W)".
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (area-averaging when shrinking) and center-crop a square, as CogView."""
    image = image.convert("RGB")
    w, h = image.size
    if (w, h) == (size, size):
        return image
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_tensor(images: Sequence[Image.Image], size: int | None = None) -> torch.Tensor:
    """PIL images -> float tensor (B, 3, H, W) in [0, 1]; resized and cropped to ``size`` if given."""
    if len(images) == 0:
        raise ValueError("no images given")
    arrays = []
    for im in images:
        if not isinstance(im, Image.Image):
            raise ValueError(f"expected PIL images, got {type(im).__name__}")
        im = resize_center_crop(im, size) if size else im.convert("RGB")
        arrays.append(np.asarray(im, dtype=np.uint8))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images have different sizes {sorted(shapes)}; pass size= to resize them")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """Float tensor (B, 3, H, W) in [0, 1] -> PIL images (clamped, rounded)."""
    arr = (
        pixels.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    )
    return [Image.fromarray(a, "RGB") for a in arr]


def make_grid(
    images: Sequence[Image.Image],
    columns: int,
    scale: int = 1,
    pad: int = 2,
    fill: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Paste equally sized images into a grid, optionally upscaled (nearest) for viewing."""
    if not images:
        raise ValueError("no images to put in a grid")
    w, h = images[0].size
    w, h = w * scale, h * scale
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * w + (columns + 1) * pad, rows * h + (rows + 1) * pad), fill)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        tile = im.resize((w, h), Image.NEAREST) if scale != 1 else im
        grid.paste(tile, (pad + c * (w + pad), pad + r * (h + pad)))
    return grid


def png_bytes(images: Sequence[Image.Image]) -> list[bytes]:
    """Each image's PNG encoding: what "identical images" means for a seeded run's files."""
    out = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB between pixel tensors in [0, 1], shape (B, 3, H, W) -> (B,)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)
