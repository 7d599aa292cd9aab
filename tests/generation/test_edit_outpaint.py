"""Outpainting on a tiny random model (32 px, 8x8 codes of 4 px): a shift moves the image's own
codes whole and samples the cells it left; a pad shrinks the image into the canvas and samples the
border; shifts and pads that leave nothing, or move nothing, are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cogview.cli import main
from cogview.generation.editing import Editor, pad_canvas, shift_canvas
from cogview.pipeline import CogViewPipeline

PROMPT = "a blue square on the left of a white background"


@pytest.fixture(scope="module")
def editor(tiny_model_dir: Path) -> Editor:
    return Editor(CogViewPipeline.from_pretrained(tiny_model_dir).text_to_image)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    arr = np.full((32, 32, 3), 245, np.uint8)
    arr[4:20, 10:30] = (40, 80, 220)
    return Image.fromarray(arr)


def test_shift_moves_the_codes_whole() -> None:
    codes = torch.arange(64).view(8, 8)
    canvas, regen = shift_canvas(codes, (-8, 5), cell=4)  # 2 cells left, 1 cell down (5 / 4 rounds to 1)
    assert torch.equal(canvas[1:, :6], codes[:7, 2:])
    assert bool(regen[0].all()) and bool(regen[:, 6:].all()) and not bool(regen[1:, :6].any())
    _, regen = shift_canvas(codes, (6, 0), cell=4)  # 1.5 cells: halves round away from zero
    assert bool(regen[:, :2].all()) and not bool(regen[:, 2:].any())
    _, regen = shift_canvas(codes, (-6, 0), cell=4)
    assert bool(regen[:, 6:].all()) and not bool(regen[:, :6].any())


def test_outpainting_by_shift_keeps_the_moved_codes(editor: Editor, image: Image.Image) -> None:
    r = editor.run(image, PROMPT, shift=(-8, 0), candidates=2, seed=0)
    source = editor.t2i.image_tokenizer.encode([image])[0].cpu()  # [8, 8]
    assert r.mode == "outpaint" and bool(r.regenerate[:, 6:].all()) and int(r.regenerate.sum()) == 16
    for codes in r.candidate_codes:
        assert torch.equal(codes[:, :6], source[:, 2:])
    # The hole ends every row, so the known codes of the next rows score the candidates.
    assert r.scores[0] != r.scores[1]
    down = editor.run(image, PROMPT, mode="outpaint", shift=(0, 8), seed=0)  # new rows on top
    assert torch.equal(down.codes[2:], source[:6]) and bool(down.regenerate[:2].all())


def test_pad_shrinks_the_image_into_the_canvas(editor: Editor, image: Image.Image) -> None:
    canvas, regen = pad_canvas(image, (4, 0, 4, 8), 32, 8)
    assert canvas.size == (32, 32) and canvas.mode == "RGB"
    assert np.array_equal(np.asarray(canvas)[:, :4], np.repeat(np.asarray(canvas)[:, 4:5], 4, axis=1))
    assert not bool(regen[:6, 1:7].any()) and int(regen.sum()) == 64 - 6 * 6
    r = editor.run(image, PROMPT, pad=4, seed=1)
    assert r.mode == "outpaint" and int(r.regenerate.sum()) == 64 - 36
    assert torch.equal(r.codes[~r.regenerate], r.source_codes[~r.regenerate])
    assert torch.equal(r.source_codes, editor.t2i.image_tokenizer.encode([pad_canvas(image, 4, 32, 8)[0]])[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shift": (1, 1)}, "less than half a code cell"),
        ({"shift": (0, 0)}, "nothing to outpaint"),
        ({"shift": (32, 0)}, "out of the 32 px canvas"),
        ({"shift": (0, -30)}, "out of the 32 px canvas"),
        ({"shift": (8,)}, "two ints"),
        ({"shift": (2.5, 0)}, "whole pixels"),
        ({"pad": 0}, "nothing to outpaint"),
        ({"pad": (16, 0, 16, 0)}, "no room"),
        ({"pad": (-4, 0, 0, 0)}, ">= 0"),
        ({"pad": (4, 4)}, "one int or four"),
        ({"shift": (8, 0), "grow": 1}, "widens an inpainting hole"),
        ({"mode": "outpaint", "rows": 2}, "does not take rows"),
    ],
)
def test_bad_shifts_and_pads_are_refused(
    editor: Editor, image: Image.Image, kwargs: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        editor.run(image, PROMPT, **kwargs)


def test_cli_outpaints(tiny_model_dir: Path, image: Image.Image, tmp_path: Path) -> None:
    src = tmp_path / "scene.png"
    image.save(src)
    out = tmp_path / "out"
    common = [str(src), PROMPT, "--model", str(tiny_model_dir), "--out", str(out), "--seed", "3"]
    assert main(["edit", *common, "--shift=-8,0"]) == 0
    settings = json.loads((out / "scene_outpaint.json").read_text())
    assert settings["mode"] == "outpaint" and settings["shift"] == "-8,0"
    assert main(["edit", *common, "--pad", "4,0,4,0"]) == 0
    assert main(["edit", *common, "--pad", "4,4"]) == 2
    assert main(["edit", *common, "--shift", "8"]) == 2
