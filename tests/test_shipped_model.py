"""The shipped default model folder: it loads on its own and serves all four jobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cogview import datasets
from cogview.pipeline import CogViewPipeline


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


def test_shipped_captioning_and_upscaling_of_a_test_scene(pipe: CogViewPipeline) -> None:
    scene = datasets.load("shapes", "test", size=32)[0]
    caption = pipe.caption(scene.image, language="en")[0]
    assert caption and caption.isascii()
    big = pipe.upscale(scene.image, seed=0)
    assert big.size == (64, 64)
    truth = np.asarray(datasets.load("shapes", "test", size=64)[0].image, dtype=np.float64) / 255
    mse = np.mean((np.asarray(big, dtype=np.float64) / 255 - truth) ** 2)
    assert 10 * np.log10(1 / mse) > 25  # a real upscale of the scene, not plain background (~16 dB)
