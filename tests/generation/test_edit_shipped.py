"""Editing with the shipped model on a few held-out test items, read by our own checkers: digit
completion, recolour by inpainting (the default hole, grown by a cell) and outpainting by shift.
benchmarks/editing.py measures the same tasks on 100 items per cell."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cogview import datasets
from cogview.datasets import digits, shapes
from cogview.datasets.checkers import DigitClassifier, check_shapes
from cogview.generation.editing import Editor
from cogview.pipeline import CogViewPipeline


@pytest.fixture(scope="module")
def editor() -> Editor:
    pipe = CogViewPipeline.from_pretrained()
    return Editor(pipe.text_to_image, pipe.captioner)


def test_shipped_model_completes_digits_from_their_top_third(editor: Editor) -> None:
    classifier = DigitClassifier.fit_default()
    test = datasets.load("digits", "test")
    rows = round(editor.t2i.image_tokenizer.grid_size / 3)  # 3 of 8
    read = 0
    for i in range(4):
        digit = test[i].attributes["digit"]
        r = editor.run(test[i].image, digits.canonical_caption(digit, "en"), rows=rows, seed=i)
        assert torch.equal(r.codes[:rows], r.source_codes[:rows])
        read += classifier.predict([r.image])[0] == digit
    # Measured 2 of 4 with the emoji model's 8x8 grid (3 rows keep 12 px); the first model, 16x16
    # codes, completed 94-95% (docs/editing.md). Floor at the measure: 4 items are few.
    assert read >= 2


def test_shipped_model_recolours_a_shape(editor: Editor) -> None:
    read = 0
    for i in range(4):
        scene = shapes.sample_scene("test", i)
        colour = next(c for c in shapes.COLOURS if c not in (scene.colour, scene.background))
        target = dataclasses.replace(scene, colour=colour).attributes
        cx, cy = scene.centre
        h = scene.size / 2 + 1
        box = (int(cx - h), int(cy - h), int(cx + h) + 1, int(cy + h) + 1)
        r = editor.run(
            shapes.render_scene(scene, 32), shapes.canonical_caption(target, "zh"), box=box, seed=i
        )
        read += check_shapes(r.image, target)["all"]
    # Measured 2 of 4 with the emoji model (the shape field is its weak one: 74.5-78% drawn).
    assert read >= 2


def test_shipped_model_outpaints_a_moved_scene(editor: Editor) -> None:
    scenes = (shapes.sample_scene("test", i) for i in range(100))
    read = 0
    for i, scene in enumerate([s for s in scenes if s.position == "left"][:4]):
        moved = {**scene.attributes, "position": "center"}  # 8 px right: the left anchor is 7 px off
        r = editor.run(
            shapes.render_scene(scene, 32), shapes.canonical_caption(moved, "en"), shift=(8, 0), seed=i
        )
        k = 8 * r.regenerate.shape[1] // 32  # the code columns the 8 px shift uncovers
        assert bool(r.regenerate[:, :k].all()) and not bool(r.regenerate[:, k:].any())
        read += check_shapes(r.image, moved)["all"]
    assert read >= 3
