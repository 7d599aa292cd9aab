"""Real handwritten digits: the 1,797 8x8 scans bundled with scikit-learn (no download).

Split by scikit-learn's order: examples 0-1499 are `train`, 1500-1796 are `test`. Images are
dark ink on light paper (grey = 255 * (1 - value / 16), so 0 is white paper and 16 black
ink), upscaled with a bicubic filter to `size` (32 by default) so strokes look smooth, and
returned as RGB with equal channels. Captions pick one of several templates per language by a
hash of (seed, split, index); template 0 is canonical (手写数字7 / a handwritten digit 7).
attributes: {"digit": label, "index": position in scikit-learn's order (1500.. for test)}.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from cogview.datasets.base import Example, ExampleSequence, check_lang, check_size, check_split, stable_int

N_TRAIN = 1500
N_TOTAL = 1797
ZH_NUMERALS = ("零", "一", "二", "三", "四", "五", "六", "七", "八", "九")
EN_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# {d}: Arabic numeral, {zh}: Chinese numeral, {word}: English word. Index 0 is canonical.
ZH_TEMPLATES = (
    "手写数字{d}",
    "数字{zh}",
    "一个手写的数字{d}",
    "手写的{zh}",
    "一张手写数字{zh}的图片",
)
EN_TEMPLATES = (
    "a handwritten digit {d}",
    "the number {word}",
    "a handwritten {word}",
    "the digit {d} written by hand",
    "a picture of a handwritten number {d}",
)


def caption(digit: int, lang: str, template: int = 0) -> str:
    """The caption of `digit` in `lang` with template number `template` (0 is canonical)."""
    check_lang(lang)
    if not isinstance(digit, (int, np.integer)) or not 0 <= digit <= 9:
        raise ValueError(f"digit must be an int in 0..9, got {digit!r}")
    templates = ZH_TEMPLATES if lang == "zh" else EN_TEMPLATES
    if not 0 <= template < len(templates):
        raise ValueError(f"template must be in [0, {len(templates)}) for lang {lang!r}, got {template}")
    d = int(digit)
    return templates[template].format(d=d, zh=ZH_NUMERALS[d], word=EN_WORDS[d])


def canonical_caption(digit: int, lang: str) -> str:
    """手写数字{d} / a handwritten digit {d}."""
    return caption(digit, lang, 0)


def parse_caption(text: str, lang: str) -> int | None:
    """The digit a caption in any template names, or None if ``text`` is not a well-formed caption."""
    check_lang(lang)
    text = text.strip()
    for d in range(10):
        for t in range(len(ZH_TEMPLATES if lang == "zh" else EN_TEMPLATES)):
            if caption(d, lang, t) == text:
                return d
    return None


def all_captions() -> list[str]:
    """Every caption any digits example can have, both languages, in a fixed order."""
    out = [
        caption(d, lang, t)
        for lang, templates in (("zh", ZH_TEMPLATES), ("en", EN_TEMPLATES))
        for t in range(len(templates))
        for d in range(10)
    ]
    return list(dict.fromkeys(out))


def render_digit(pixels: np.ndarray, size: int = 32) -> Image.Image:
    """An 8x8 array of ink values in 0..16 as a dark-on-light RGB image of `size` pixels."""
    check_size(size)
    grey = 255.0 * (1.0 - np.asarray(pixels, dtype=np.float32).reshape(8, 8) / 16.0)
    big = Image.fromarray(grey, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    arr = np.clip(np.rint(np.asarray(big)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L").convert("RGB")


class DigitsDataset(ExampleSequence):
    """One split of the scikit-learn digits, rendered lazily at `size`."""

    def __init__(self, split: str, size: int = 32, seed: int = 0) -> None:
        from sklearn.datasets import load_digits  # bundled with scikit-learn; imported lazily

        check_split(split)
        self.split = split
        self.size = check_size(size)
        self.seed = seed
        bunch = load_digits()
        assert bunch.images.shape == (N_TOTAL, 8, 8), bunch.images.shape
        self.offset = 0 if split == "train" else N_TRAIN
        stop = N_TRAIN if split == "train" else N_TOTAL
        self.pixels = bunch.images[self.offset : stop]  # (N, 8, 8) ink in 0..16
        self.labels = bunch.target[self.offset : stop].astype(int)  # (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def _example(self, index: int) -> Example:
        d = int(self.labels[index])
        pick = stable_int("cogview-digits-caption", self.seed, self.split, index)
        zh = caption(d, "zh", pick % len(ZH_TEMPLATES))
        en = caption(d, "en", (pick // len(ZH_TEMPLATES)) % len(EN_TEMPLATES))
        attrs = {"digit": d, "index": self.offset + index}
        return Example(
            image=render_digit(self.pixels[index], self.size), caption_zh=zh, caption_en=en, attributes=attrs
        )


def load(split: str, size: int = 32, seed: int = 0) -> DigitsDataset:
    """The digits split `split` ("train": 1,500 images, "test": 297); `seed` only varies captions."""
    return DigitsDataset(split, size=size, seed=seed)
