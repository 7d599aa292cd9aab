"""The shipped default model folder: it loads on its own and serves all four jobs, on emoji,
shapes and digits (docs/default_model.md has the full measurements)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cogview import datasets
from cogview.datasets import emoji, shapes
from cogview.datasets.checkers import EmojiChecker
from cogview.pipeline import CogViewPipeline

# Train emoji the tests ask for, by canonical name (fixed, so a test reads the same images each run).
EMOJI = ("🍕", "🚀", "🦒", "🐱")


@pytest.fixture(scope="module")
def pipe() -> CogViewPipeline:
    return CogViewPipeline.from_pretrained()


def test_the_shipped_folder_serves_every_job(pipe: CogViewPipeline) -> None:
    assert {"text_to_image", "image_to_text", "super_resolution"} <= set(pipe.models)


def test_shipped_text_to_image_is_seeded(pipe: CogViewPipeline) -> None:
    torch.set_num_threads(1)
    a = pipe.generate("a handwritten digit 7", seed=3)[0]
    b = pipe.generate("a handwritten digit 7", seed=3)[0]
    assert a.size == (32, 32) and np.array_equal(np.asarray(a), np.asarray(b))


def test_shipped_model_draws_emoji_by_name(pipe: CogViewPipeline) -> None:
    """Bare CLDR names in both languages, the shipped settings, read by the nearest-render checker."""
    checker = EmojiChecker.build()
    asked = [(e, emoji.canonical_caption(e, lang)) for e in EMOJI for lang in ("zh", "en")]
    images = [pipe.generate(prompt, seed=i)[0] for i, (_, prompt) in enumerate(asked)]
    right = sum(r["emoji"] for r in checker.check(images, [e for e, _ in asked]))
    assert right >= EMOJI_DRAWN, f"{right} of {len(asked)} emoji drawn (measured: {EMOJI_DRAWN_MEASURED})"


def test_shipped_captions_name_emoji(pipe: CogViewPipeline) -> None:
    assert all(emoji.emoji_split(emoji.emoji_info(e)) == "train" for e in EMOJI)
    right = 0
    for e in EMOJI:
        for lang in ("zh", "en"):
            right += emoji.parse_caption(pipe.caption(emoji.render_emoji(e), language=lang)[0], lang) == e
    assert right >= EMOJI_NAMED, f"{right} of {2 * len(EMOJI)} captions name the emoji (measured: {EMOJI_NAMED_MEASURED})"


def test_shipped_captions_name_the_scene(pipe: CogViewPipeline) -> None:
    """Captions of held-out scenes, read back by the caption parser (the shapes checker's reader)."""
    scenes = datasets.load("shapes", "test", size=32)
    right = 0
    for scene in (scenes[i] for i in range(8)):
        for lang in ("zh", "en"):
            parsed = shapes.parse_caption(pipe.caption(scene.image, language=lang)[0], lang)
            right += parsed is not None and all(parsed[k] == scene.attributes[k] for k in parsed)
    assert right >= 15, f"{right} of 16 captions name the scene (measured: 16)"


def test_shipped_upscaling_of_test_scenes(pipe: CogViewPipeline) -> None:
    low, high = datasets.load("shapes", "test", size=32), datasets.load("shapes", "test", size=64)
    psnrs = []
    for i in range(4):
        big = pipe.upscale(low[i].image, seed=0)
        assert big.size == (64, 64)
        truth = np.asarray(high[i].image, dtype=np.float64) / 255
        mse = np.mean((np.asarray(big, dtype=np.float64) / 255 - truth) ** 2)
        psnrs.append(10 * np.log10(1 / mse))
    # measured 39.2, 35.9, 40.9 and more on these scenes; plain background would be ~16 dB
    assert np.mean(psnrs) > 36, psnrs
