"""The one language detector: which characters make a text Chinese ("zh") and which leave it "en"."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cogview.datasets.folder import load_folder
from cogview.generation.text_to_image import prompt_kind
from cogview.language import is_cjk, text_language


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("a red circle on the left", "en"),
        ("a handwritten digit 7", "en"),
        ("蓝色背景上左边有一个红色圆形", "zh"),
        ("手写数字7", "zh"),
        ("𠀀 rare", "zh"),  # an ideograph outside the Basic Multilingual Plane
        ("ねこ", "zh"),  # kana count: it was "en" for prompts and "zh" for folder captions
        ("한국어", "zh"),  # hangul too
        ("hello，world", "zh"),  # a full-width comma counts (it was "en" for folder captions)
        ("「quoted」", "zh"),  # CJK punctuation
        ("café, naïve — 🍕", "en"),  # other non-ASCII letters and symbols do not
        ("", "en"),
    ],
)
def test_text_language(text: str, language: str) -> None:
    assert text_language(text) == language
    assert prompt_kind(text) == language  # generation asks the same detector


def test_is_cjk_per_character() -> None:
    assert all(is_cjk(ch) for ch in "红ねカ한，。！Ａ")
    assert not any(is_cjk(ch) for ch in "aZ7 ,.!éß▁🍕")


def test_folder_captions_are_filed_by_the_same_detector(tmp_path: Path) -> None:
    texts = ["a red square", "红色的方块", "ねこ", "한국어", "hello，world"]
    lines = []
    for i, text in enumerate(texts):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png\t{text}")
    (tmp_path / "captions.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    examples = load_folder(tmp_path, split="all", size=8)
    for example in examples:
        caption = example.attributes["caption"]
        filed = "zh" if example.caption_zh else "en"
        assert filed == text_language(caption), caption
        assert example.captions == (caption,)
