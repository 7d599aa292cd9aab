"""Shared pieces of the datasets: the `Example` record, a lazy sequence base and stable hashing.

Every dataset here is a read-only sequence that renders or decodes its examples on access, so
a 20,000-scene split costs nothing until it is indexed. Determinism comes from `stable_int`, a
keyed BLAKE2 hash, rather than Python's `hash` (salted per process) or numpy streams.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
from PIL import Image

SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False)
class Example:
    """One image with its captions; a caption missing in a language is the empty string."""

    image: Image.Image
    caption_zh: str
    caption_en: str
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def captions(self) -> tuple[str, ...]:
        """The non-empty captions, Chinese first."""
        return tuple(c for c in (self.caption_zh, self.caption_en) if c)

    def caption(self, lang: str) -> str:
        """The caption in `lang` ("zh" or "en"), possibly empty."""
        check_lang(lang)
        return self.caption_zh if lang == "zh" else self.caption_en


def check_lang(lang: str) -> None:
    if lang not in ("zh", "en"):
        raise ValueError(f"unknown caption language {lang!r}; use 'zh' or 'en'")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")


def check_size(size: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise ValueError(f"size must be an int >= 8 (pixels per side), got {size!r}")
    return size


def stable_int(*parts: object) -> int:
    """A 64-bit integer hash of `parts` that is identical across runs, processes and platforms."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


class ExampleSequence(Sequence[Example]):
    """A fixed-length sequence that builds each `Example` on access; subclasses define `_example`."""

    def __len__(self) -> int:
        raise NotImplementedError

    def _example(self, index: int) -> Example:
        raise NotImplementedError

    def _normalise_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} examples")
        return index % n

    @overload
    def __getitem__(self, index: int) -> Example: ...

    @overload
    def __getitem__(self, index: slice) -> list[Example]: ...

    def __getitem__(self, index: int | slice) -> Example | list[Example]:
        if isinstance(index, slice):
            return [self._example(i) for i in range(*index.indices(len(self)))]
        return self._example(self._normalise_index(index))

    def __iter__(self) -> Iterator[Example]:
        for i in range(len(self)):
            yield self._example(i)


def image_array(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """What the checkers read: an RGB float32 array (size, size, 3) in 0..255 from a PIL image or a uint8 HxWx3 array."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image or an HxWx3 uint8 array, got {type(image).__name__}")
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)
