"""Images in JSON: base64 text <-> PIL images.

Images travel as base64 PNG inside JSON, so the API needs no multipart parser and a browser's
``FileReader.readAsDataURL`` result can be posted as it is. Decoding checks each side and the
shape from the header before the pixels are read (:func:`cogview.images.open_image`): a small
file must not unpack into a huge image.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from PIL import Image

from cogview.images import open_image, png_bytes


def decode_image(data: str, name: str = "image") -> Image.Image:
    """An RGB image from base64 text (optionally a ``data:image/...;base64,`` URL)."""
    if data.startswith("data:"):
        head, _, data = data.partition(",")
        if not head.endswith(";base64"):
            raise ValueError(f"{name} is a data: URL without ;base64 encoding; send base64 image data")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} is not valid base64; send the image file's bytes base64-encoded") from None
    return open_image(raw, name)


def encode_images(images: Sequence[Image.Image]) -> list[str]:
    """Base64 PNG of each image: the same bytes ``cogview generate`` writes to its files."""
    return [base64.b64encode(b).decode("ascii") for b in png_bytes(images)]
