"""Token-space editing on a tiny random model: masks map to code cells, known codes are kept
exactly, seeds reproduce, bad input is refused, and the CLI writes a PNG and its settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cogview import datasets
from cogview.cli import main
from cogview.datasets import digits
from cogview.datasets.checkers import DigitClassifier
from cogview.generation.editing import Editor, box_mask, grid_mask
from cogview.images import png_bytes
from cogview.pipeline import CogViewPipeline

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> CogViewPipeline:
    return CogViewPipeline.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def editor(pipe: CogViewPipeline) -> Editor:
    return Editor(pipe.text_to_image)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[8:24, 4:20] = (220, 40, 40)
    return Image.fromarray(arr)


def test_box_maps_to_every_cell_it_touches() -> None:
    # Tiny tokenizer: 32 px, 8x8 codes of 4x4 px. Pixels 4..8 x 0..3 touch columns 1-2, row 0.
    grid = grid_mask(box_mask((4, 0, 9, 4), (32, 32)), 32, 8)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0, 1:3] = True
    assert torch.equal(grid, expected)


def test_one_masked_pixel_regenerates_its_cell(editor: Editor, image: Image.Image) -> None:
    mask = Image.new("1", (32, 32))
    mask.putpixel((13, 30), 1)
    grid = editor.regenerate_grid(image, mask=mask)
    assert grid.sum() == 1 and bool(grid[7, 3])


def test_mask_follows_the_resize_and_crop(editor: Editor) -> None:
    wide = Image.new("RGB", (64, 48))  # -> 43x32 after resizing, 5 columns cropped on the left
    mask = np.zeros((48, 64), bool)
    mask[:, :9] = True  # resized to columns 0..5, of which the crop keeps column 5
    assert editor.regenerate_grid(wide, mask=mask)[:, 0].all()
    mask[:, :] = False
    mask[:, :5] = True  # wholly cropped away: nothing left to regenerate
    with pytest.raises(ValueError, match="nothing to regenerate"):
        editor.regenerate_grid(wide, mask=mask)


def test_inpainting_keeps_the_known_codes(editor: Editor, image: Image.Image) -> None:
    r = editor.run(image, PROMPT, box=(8, 8, 20, 16), candidates=3, seed=1)
    assert r.regenerate.sum() == 3 * 2
    for codes in r.candidate_codes:
        assert torch.equal(codes[~r.regenerate], r.source_codes[~r.regenerate])
    assert len(r.scores) == 3 and r.kept == int(np.argmax(r.scores))
    assert torch.equal(r.source_codes, editor.t2i.image_tokenizer.encode(image)[0].cpu())
    assert r.image.size == (32, 32) and r.to_dict()["regenerated_codes"] == 6


def test_scores_are_the_teacher_forced_likelihood_of_the_known_suffix(
    editor: Editor, image: Image.Image
) -> None:
    r = editor.run(image, PROMPT, box=(28, 28, 32, 32), candidates=2, seed=0)  # the last cell: no suffix
    assert r.scores == [0.0, 0.0] and r.kept == 0
    assert len(editor.run(image, PROMPT, box=(0, 0, 4, 4), seed=0).scores) == 1  # post-selection is opt-in


def test_same_seed_same_png(pipe: CogViewPipeline, image: Image.Image) -> None:
    a = pipe.edit(image, PROMPT, box=(0, 0, 16, 16), seed=5, candidates=2)
    b = pipe.edit(image, PROMPT, box=(0, 0, 16, 16), seed=5, candidates=2)
    assert png_bytes([a]) == png_bytes([b])


def test_completion_keeps_the_top_rows(editor: Editor, image: Image.Image) -> None:
    r = editor.run(image, PROMPT, mode="complete", rows=3, seed=2)
    assert torch.equal(r.codes[:3], r.source_codes[:3]) and bool(r.regenerate[3:].all())
    assert len(r.scores) == 1


def test_variations_resample_a_seeded_fraction(editor: Editor, image: Image.Image) -> None:
    a = editor.run(image, PROMPT, mode="vary", strength=0.25, seed=3, candidates=1)
    b = editor.run(image, PROMPT, mode="vary", strength=0.25, seed=3, candidates=1)
    assert a.regenerate.sum() == 16 and torch.equal(a.regenerate, b.regenerate)
    assert torch.equal(a.codes[~a.regenerate], a.source_codes[~a.regenerate])
    assert torch.equal(a.codes, b.codes)


def test_all_ones_mask_is_text_to_image(editor: Editor, image: Image.Image) -> None:
    r = editor.run(image, PROMPT, mask=np.ones((32, 32), bool), seed=0)
    assert bool(r.regenerate.all()) and len(r.scores) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mask": np.ones((16, 32), bool)}, ValueError, "shape"),
        ({"mask": Image.new("L", (31, 32), 255)}, ValueError, "of its size"),
        ({"mask": np.zeros((32, 32), bool)}, ValueError, "nothing to regenerate"),
        ({"box": (0, 0, 40, 8)}, ValueError, "box"),
        ({"box": "0,0,4"}, ValueError, "four integers"),
        ({}, ValueError, "exactly one of"),
        ({"box": (0, 0, 4, 4), "rows": 2}, ValueError, "exactly one of"),
        ({"mode": "complete", "rows": 8}, ValueError, "keeps the whole"),
        ({"mode": "vary", "strength": 0.0}, ValueError, "strength"),
        ({"mode": "outpaint", "rows": 2}, ValueError, "mode"),
        ({"box": (0, 0, 4, 4), "candidates": 0}, ValueError, "candidates"),
        ({"box": (0, 0, 4, 4), "seed": 1.5}, TypeError, "seed"),
    ],
)
def test_bad_input_is_refused(
    editor: Editor, image: Image.Image, kwargs: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        editor.run(image, PROMPT, **kwargs)


def test_an_image_of_another_mode_or_size_is_converted(editor: Editor) -> None:
    grey = Image.new("L", (40, 40), 128)
    r = editor.run(grey, PROMPT, box=(0, 0, 20, 20), seed=0, candidates=1)
    assert r.image.size == (32, 32) and r.image.mode == "RGB"
    with pytest.raises(TypeError, match="PIL image"):
        editor.run(np.zeros((32, 32, 3)), PROMPT, box=(0, 0, 4, 4))


def test_cli_writes_png_and_settings(
    tiny_model_dir: Path, image: Image.Image, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.png"
    image.save(src)
    out = tmp_path / "out"
    args = ["edit", str(src), PROMPT, "--box", "0,0,16,16", "--seed", "4", "--out", str(out)]
    assert main([*args, "--model", str(tiny_model_dir)]) == 0
    png = out / "in_inpaint.png"
    assert Image.open(png).size == (32, 32)
    settings = json.loads(png.with_suffix(".json").read_text())
    assert settings["seed"] == 4 and settings["mode"] == "inpaint" and settings["box"] == "0,0,16,16"
    assert main(["edit", str(src), PROMPT, "--box", "1,2", "--model", str(tiny_model_dir)]) == 2
    assert "four integers" in capsys.readouterr().err
    assert main(["edit", str(src), PROMPT, "--model", str(tiny_model_dir)]) == 2


def test_shipped_model_completes_digits_from_their_top_third() -> None:
    editor = Editor(CogViewPipeline.from_pretrained().text_to_image)
    classifier = DigitClassifier.fit_default()
    test = datasets.load("digits", "test")
    read = 0
    for i in range(4):
        digit = test[i].attributes["digit"]
        prompt = digits.canonical_caption(digit, "en")
        r = editor.run(test[i].image, prompt, mode="complete", rows=5, seed=i)
        assert torch.equal(r.codes[:5], r.source_codes[:5])
        read += classifier.predict([r.image])[0] == digit
    assert read >= 3
