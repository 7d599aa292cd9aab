"""Digits dataset: scikit-learn split sizes, rendering, determinism and captions."""

from __future__ import annotations

import numpy as np

from cogview.datasets import all_caption_texts, digits, load, shapes


def test_split_sizes_and_indices() -> None:
    train, test = load("digits", "train"), load("digits", "test")
    assert (len(train), len(test)) == (1500, 297)
    assert train[0].attributes["index"] == 0 and test[0].attributes["index"] == 1500
    assert test[-1].attributes["index"] == 1796


def test_images_are_dark_ink_on_light_paper() -> None:
    ex = load("digits", "test", size=40)[0]
    img = np.asarray(ex.image)
    assert ex.image.mode == "RGB" and img.shape == (40, 40, 3)
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])
    assert img[0, 0, 0] > 240  # paper corner
    assert img.min() < 60  # ink


def test_deterministic_and_seed_varies_only_captions() -> None:
    a, b = load("digits", "train")[7], load("digits", "train")[7]
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.caption_en == b.caption_en
    s0 = [load("digits", "train", seed=0)[i] for i in range(30)]
    s1 = [load("digits", "train", seed=1)[i] for i in range(30)]
    assert [e.caption_zh + e.caption_en for e in s0] != [e.caption_zh + e.caption_en for e in s1]
    assert all(
        np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(s0[:3], s1[:3], strict=True)
    )


def test_captions() -> None:
    assert digits.canonical_caption(7, "zh") == "手写数字7"
    assert digits.canonical_caption(7, "en") == "a handwritten digit 7"
    ds = load("digits", "train")
    known = set(digits.all_captions())
    for i in range(50):
        e = ds[i]
        assert e.caption_zh in known and e.caption_en in known
        assert str(e.attributes["digit"]) in e.caption_zh + e.caption_en or any(
            w in e.caption_zh + e.caption_en
            for w in (digits.ZH_NUMERALS[e.attributes["digit"]], digits.EN_WORDS[e.attributes["digit"]])
        )


def test_all_caption_texts_covers_canonical_and_is_deterministic() -> None:
    texts = all_caption_texts()
    assert texts == all_caption_texts() and len(texts) == len(set(texts))
    assert {digits.canonical_caption(d, lang) for d in range(10) for lang in ("zh", "en")} <= set(texts)
    attrs = {"shape": "triangle", "colour": "orange", "background": "white", "position": "center"}
    assert shapes.canonical_caption(attrs, "zh") in texts and shapes.canonical_caption(attrs, "en") in texts
    assert "数字七" in texts and "the number seven" in texts
    for e in load("shapes", "test", n=50):
        assert e.caption_zh in texts and e.caption_en in texts
