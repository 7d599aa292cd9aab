"""Shapes dataset: determinism, split disjointness, palette, captions and multi-size rendering."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cogview.datasets import load, shapes
from cogview.datasets.shapes import PALETTE, Scene, render_scene, sample_scene, scene_split


def test_same_index_and_seed_give_identical_pixels() -> None:
    a, b = load("shapes", "train", n=10)[3], load("shapes", "train", n=10)[3]
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert (a.caption_zh, a.caption_en, a.attributes) == (b.caption_zh, b.caption_en, b.attributes)


def test_different_seed_gives_different_scenes() -> None:
    keys0 = [load("shapes", "train", n=20, seed=0).scene(i).key for i in range(20)]
    keys1 = [load("shapes", "train", n=20, seed=1).scene(i).key for i in range(20)]
    assert keys0 != keys1


def test_lengths_and_image_format() -> None:
    assert len(load("shapes", "train")) == 20000
    assert len(load("shapes", "test")) == 1000
    ex = load("shapes", "test", n=5, size=48)[-1]
    assert ex.image.mode == "RGB" and ex.image.size == (48, 48)
    with pytest.raises(IndexError):
        load("shapes", "test", n=5)[5]


def test_splits_never_share_a_scene_key() -> None:
    train = {sample_scene("train", i, seed).key for seed in (0, 1) for i in range(3000)}
    test = {sample_scene("test", i, seed).key for seed in (0, 1) for i in range(1000)}
    assert not train & test
    assert all(scene_split(sample_scene("test", i)) == "test" for i in range(100))
    assert len(test) > 500  # many distinct test scenes, not a handful repeated


def test_colour_differs_from_background_and_attributes_are_valid() -> None:
    for i in range(300):
        a = sample_scene("train", i).attributes
        assert a["colour"] != a["background"]
        assert a["shape"] in shapes.SHAPES and a["position"] in shapes.POSITIONS


def test_palette_is_exact_on_solid_pixels() -> None:
    img = np.asarray(render_scene(Scene("square", "red", "blue", "center", 0, 0, 0), 32))
    assert tuple(img[0, 0]) == PALETTE["blue"][0] == (40, 80, 220)
    assert tuple(img[16, 16]) == PALETTE["red"][0] == (220, 40, 40)
    for name, (rgb, _) in PALETTE.items():
        other = "black" if name != "black" else "white"
        img = np.asarray(render_scene(Scene("circle", other, name, "left", 2, 0, 0), 32))
        assert tuple(img[2, 30]) == rgb


def test_same_scene_at_two_sizes() -> None:
    for i in range(10):
        small = np.asarray(load("shapes", "test", n=10, size=32)[i].image, dtype=np.float32)
        big = load("shapes", "test", n=10, size=64)[i].image.reduce(2)
        diff = np.abs(np.asarray(big, dtype=np.float32) - small)
        assert diff.mean() < 1.0 and diff.max() < 40
    bigger = load("shapes", "test", n=3, size=128)[2].image.resize((32, 32), Image.Resampling.BOX)
    assert (
        np.abs(
            np.asarray(bigger, np.float32) - np.asarray(load("shapes", "test", n=3)[2].image, np.float32)
        ).mean()
        < 1.0
    )


def test_shape_is_inside_the_image_and_big_enough() -> None:
    for i in range(200):
        scene = sample_scene("train", i)
        img = np.asarray(render_scene(scene, 32)).astype(int)
        bg = np.array(PALETTE[scene.background][0])
        fg = np.abs(img - bg).sum(-1) > 60
        assert fg.sum() >= 50  # a 12 px triangle covers ~72 px
        assert not fg[0].any() and not fg[-1].any() and not fg[:, 0].any() and not fg[:, -1].any()


def test_canonical_captions_exact() -> None:
    attrs = {"shape": "circle", "colour": "red", "background": "blue", "position": "left"}
    assert shapes.canonical_caption(attrs, "zh") == "蓝色背景上左边有一个红色圆形"
    assert shapes.canonical_caption(attrs, "en") == "a red circle on the left of a blue background"
    centre = dict(attrs, position="center")
    assert shapes.canonical_caption(centre, "en") == "a red circle in the center of a blue background"
    assert shapes.canonical_caption(centre, "zh") == "蓝色背景上中间有一个红色圆形"
    with pytest.raises(ValueError, match="colour"):
        shapes.canonical_caption(dict(attrs, colour="pink"), "en")
    with pytest.raises(ValueError, match="language"):
        shapes.canonical_caption(attrs, "fr")


def test_examples_have_both_languages_and_varied_templates() -> None:
    ds = load("shapes", "train", n=200)
    examples = [ds[i] for i in range(200)]
    assert all(e.caption_zh and e.caption_en for e in examples)
    assert len({e.caption_en.split()[0] for e in examples}) >= 3  # several phrasings
    known = set(shapes.all_captions())
    assert all(e.caption_zh in known and e.caption_en in known for e in examples)


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match="split"):
        load("shapes", "valid")
    with pytest.raises(ValueError, match="size"):
        load("shapes", "train", size=0)
    with pytest.raises(ValueError, match="unknown dataset"):
        load("mnist", "train")
