"""Image-caption datasets: procedural shapes, scikit-learn's handwritten digits, or your own folder.

`load(name, split, **options)` returns a lazily built sequence of `Example`s (`.image` PIL RGB,
`.caption_zh`, `.caption_en`, `.attributes`). `all_caption_texts()` lists every caption the
built-in datasets can produce, for training the text tokenizer. Prompt-alignment checkers for
generated images live in `cogview.datasets.checkers` (imported on demand: it trains a model).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cogview.datasets import digits, folder, shapes
from cogview.datasets.base import Example, ExampleSequence
from cogview.datasets.folder import load_folder

DATASET_NAMES = ("shapes", "digits")

__all__ = [
    "DATASET_NAMES",
    "Example",
    "ExampleSequence",
    "all_caption_texts",
    "digits",
    "folder",
    "load",
    "load_folder",
    "shapes",
]


def load(name: str | os.PathLike, split: str, **options: Any) -> ExampleSequence:
    """The `split` of dataset `name` ("shapes", "digits" or a folder path); `options` go to its loader.

    shapes: size=32, n=None (20000 train / 1000 test), seed=0. digits: size=32, seed=0.
    folder: size=32, test_fraction=0.05 (split may also be "all").
    """
    if isinstance(name, str) and name == "shapes":
        return shapes.load(split, **options)
    if isinstance(name, str) and name == "digits":
        return digits.load(split, **options)
    if Path(name).is_dir():
        return load_folder(name, split=split, **options)
    raise ValueError(
        f"unknown dataset {str(name)!r}: use one of {DATASET_NAMES} or the path of an existing folder"
    )


def all_caption_texts() -> list[str]:
    """Every distinct caption of every template, both languages, shapes then digits; fixed order."""
    return list(dict.fromkeys(shapes.all_captions() + digits.all_captions()))
