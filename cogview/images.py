"""Image <-> tensor conversion, CogView's resize-and-crop preprocessing, grids and PSNR.

Kept free of model logic so that tokenizers, pipelines, benchmarks and the CLI share one
definition of "pixels in [0, 1], shape (B, 3, H, W)".
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
import zlib
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# Input images are bounded per side and in shape before any pixel is decoded or resized: a
# 16777216 x 1 PNG is 2.8 KB on disk, and resizing its short side to 32 px would need ~51 GB.
MAX_IMAGE_SIDE = 4096
MAX_ASPECT_RATIO = 16


def check_image_size(width: int, height: int, name: str = "image") -> None:
    """Refuse an empty image, a side over :data:`MAX_IMAGE_SIDE` or a long side over
    :data:`MAX_ASPECT_RATIO` times the short one."""
    if width < 1 or height < 1:
        raise ValueError(f"{name} is {width}x{height} pixels: it has no pixels; send a real image")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise ValueError(
            f"{name} is {width}x{height} pixels; each side may be at most {MAX_IMAGE_SIDE}: send a smaller image"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ValueError(
            f"{name} is {width}x{height} pixels, longer than {MAX_ASPECT_RATIO}:1; crop it closer to a square"
        )


def open_image(source: str | os.PathLike | bytes | BinaryIO, name: str | None = None) -> Image.Image:
    """Read an image file (path, bytes or file object) as RGB, fully decoded and size-checked first.

    The size comes from the header and is checked before the pixels are decoded; a truncated
    file, a decompression bomb or a non-image is a ValueError naming the file.
    """
    name = name or (str(source) if isinstance(source, (str, os.PathLike)) else "image")
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own bound comes next
            im = Image.open(data)
        with im:
            check_image_size(*im.size, name=name)
            if im.format == "PNG" and not _png_data_complete(im):
                raise OSError("its pixel data ends before the last row (a truncated PNG)")
            im.load()  # every pixel now: a truncated file fails here, not later
            return im.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not an image file; use a PNG or JPEG") from None
    except FileNotFoundError:
        raise ValueError(f"cannot read image {name}: no such file") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, MemoryError, EOFError) as e:
        raise ValueError(f"{name} could not be read as an image ({type(e).__name__}: {e})") from None


# Bits per pixel of each PNG colour type, per bit of depth (grey, -, RGB, palette, grey+alpha, -, RGBA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png_data_complete(im: Image.Image) -> bool:
    """Whether a PNG's compressed pixel data fills every row its header declares.

    Pillow fills rows missing from a zlib stream that ends early with zeros and reports no
    error, so a 13000 x 13000 header over 10 rows of data would pass as an image. Counting the
    decompressed bytes (streamed, never held whole) against the header's size tells.
    """
    fp = im.fp
    if fp is None:
        return True
    start = fp.tell()
    fp.seek(8)
    inflate, produced, header = zlib.decompressobj(), 0, None
    while True:
        head = fp.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        body = fp.read(length)
        fp.read(4)  # CRC: Pillow checks it
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            chunk = body
            while chunk:
                produced += len(inflate.decompress(chunk, 1 << 20))
                chunk = inflate.unconsumed_tail
        elif kind == b"IEND":
            break
    fp.seek(start)
    if header is None:
        return False
    width, height, depth, colour, _, _, interlace = header
    bits = depth * _PNG_CHANNELS.get(colour, 4)
    passes = [(0, 0, 1, 1)] if not interlace else [
        (0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)
    ]
    expected = 0
    for x0, y0, dx, dy in passes:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            expected += h * (1 + (w * bits + 7) // 8)
    return produced >= expected


def check_pixels(pixels: torch.Tensor, name: str = "images") -> torch.Tensor:
    """A float pixel tensor ``(B, 3, H, W)`` with B >= 1, sides within the image limits and
    every value finite in [0, 1]."""
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(pixels).__name__}")
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"{name}: expected a float tensor (B, 3, H, W) in [0, 1], got shape {tuple(pixels.shape)}")
    if pixels.shape[0] == 0:
        raise ValueError(f"{name}: the tensor holds no images (batch size 0)")
    if not pixels.is_floating_point():
        raise ValueError(f"{name}: expected float pixels in [0, 1], got dtype {pixels.dtype} (uint8: divide by 255)")
    check_image_size(pixels.shape[3], pixels.shape[2], name=name)
    values = pixels.detach()
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name}: the tensor holds NaN or infinite values; pixels are floats in [0, 1]")
    if bool((values < 0).any()) or bool((values > 1).any()):
        raise ValueError(
            f"{name}: values lie in [{float(values.min()):.3g}, {float(values.max()):.3g}]; pixels are floats in [0, 1]"
        )
    return pixels


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (area-averaging when shrinking) and center-crop a square, as CogView."""
    check_image_size(*image.size)
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
            raise TypeError(f"expected PIL images, got {type(im).__name__}")
        check_image_size(*im.size)
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
