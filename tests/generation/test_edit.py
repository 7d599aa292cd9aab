"""Token-space editing on a tiny random model: masks map to code cells, known codes are kept
exactly, seeds reproduce, candidates are scored, bad input is refused, and the CLI writes a PNG
and its settings. (Outpainting: test_edit_outpaint.py; the shipped model: test_edit_shipped.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cogview.cli import main
from cogview.generation.editing import (
    DEFAULT_CANDIDATES,
    DEFAULT_GROW,
    Editor,
    box_mask,
    code_log_likelihoods,
    grid_mask,
    grow_grid,
    prefix_grid,
)
from cogview.images import png_bytes
from cogview.pipeline import CogViewPipeline

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> CogViewPipeline:
    return CogViewPipeline.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def editor(pipe: CogViewPipeline) -> Editor:
    return Editor(pipe.text_to_image, pipe.captioner)


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


def test_grow_adds_the_ring_of_cells_around_a_hole() -> None:
    hole = torch.zeros(8, 8, dtype=torch.bool)
    hole[0, 0] = hole[5, 5] = True
    grown = grow_grid(hole, 1)
    assert int(grown.sum()) == 4 + 9  # the corner's ring is clipped to the grid
    assert bool(grown[4:7, 4:7].all()) and bool(grown[:2, :2].all()) and not bool(grown[3, 3])
    assert torch.equal(grow_grid(hole, 0), hole)


def test_one_masked_pixel_regenerates_its_cell(editor: Editor, image: Image.Image) -> None:
    mask = Image.new("1", (32, 32))
    mask.putpixel((13, 30), 1)
    plan = editor.layout(image, mask=mask, grow=0)
    assert plan.mode == "inpaint" and plan.regenerate.sum() == 1 and bool(plan.regenerate[7, 3])
    grown = editor.layout(image, mask=mask).regenerate  # the default grows the hole by one ring
    assert DEFAULT_GROW == 1 and grown.sum() == 6 and bool(grown[6:8, 2:5].all())


def test_mask_follows_the_resize_and_crop(editor: Editor) -> None:
    wide = Image.new("RGB", (64, 48))  # -> 43x32 after resizing, 5 columns cropped on the left
    mask = np.zeros((48, 64), bool)
    mask[:, :9] = True  # resized to columns 0..5, of which the crop keeps column 5
    assert editor.layout(wide, mask=mask, grow=0).regenerate[:, 0].all()
    mask[:, :] = False
    mask[:, :5] = True  # wholly cropped away: nothing left to regenerate
    with pytest.raises(ValueError, match="nothing to regenerate"):
        editor.layout(wide, mask=mask)


def test_inpainting_keeps_the_known_codes(editor: Editor, image: Image.Image) -> None:
    r = editor.run(image, PROMPT, box=(8, 8, 20, 16), grow=0, candidates=3, seed=1)
    assert r.mode == "inpaint" and r.regenerate.sum() == 3 * 2
    for codes in r.candidate_codes:
        assert torch.equal(codes[~r.regenerate], r.source_codes[~r.regenerate])
    assert len(r.scores) == 3 and r.kept == int(np.argmax(r.scores))
    assert torch.equal(r.source_codes, editor.t2i.image_tokenizer.encode(image)[0].cpu())
    assert r.image.size == (32, 32) and r.to_dict()["regenerated_codes"] == 6


def test_suffix_scores_are_the_likelihood_of_the_known_codes_after_the_hole(
    editor: Editor, image: Image.Image
) -> None:
    r = editor.run(image, PROMPT, box=(8, 8, 12, 12), grow=0, candidates=2, seed=0)  # cell (2, 2)
    tokens, _ = editor.t2i.prompt_tokens(PROMPT)
    logp = code_log_likelihoods(
        editor.t2i.transformer, tokens, r.candidate_codes.view(2, -1), editor.t2i.vocab.image_range
    )  # [2, 64]
    assert r.scores == pytest.approx(logp[:, 19:].sum(-1).tolist(), rel=1e-4)  # codes 19..63
    last = editor.run(image, PROMPT, box=(28, 28, 32, 32), grow=0, candidates=2, seed=0)  # no suffix
    assert last.scores == [0.0, 0.0] and last.kept == 0
    one = editor.run(image, PROMPT, box=(0, 0, 4, 4), seed=0)
    assert one.scores == [0.0] and one.select == "suffix"  # post-selection is opt-in


def test_caption_selection_keeps_the_candidate_that_best_explains_the_prompt(
    pipe: CogViewPipeline, editor: Editor, image: Image.Image
) -> None:
    r = editor.run(image, PROMPT, box=(0, 0, 16, 16), candidates=3, select="caption", seed=2)
    expected = pipe.captioner.log_likelihoods(r.candidate_codes, [PROMPT] * 3)[0]
    assert r.scores == pytest.approx(expected.tolist(), rel=1e-4) and r.kept == int(expected.argmax())
    assert r.to_dict()["select"] == "caption"
    with pytest.raises(ValueError, match="caption model"):
        Editor(pipe.text_to_image).run(image, PROMPT, box=(0, 0, 4, 4), candidates=2, select="caption")


def test_same_seed_same_png(pipe: CogViewPipeline, image: Image.Image) -> None:
    a = pipe.edit(image, PROMPT, box=(0, 0, 16, 16), seed=5, candidates=2)
    b = pipe.edit(image, PROMPT, box=(0, 0, 16, 16), seed=5, candidates=2)
    assert png_bytes([a]) == png_bytes([b])


def test_completion_keeps_the_top_rows(pipe: CogViewPipeline, editor: Editor, image: Image.Image) -> None:
    r = editor.run(image, PROMPT, rows=3, seed=2)
    assert r.mode == "complete" and bool(r.regenerate[3:].all()) and not bool(r.regenerate[:3].any())
    for codes in r.candidate_codes:
        assert torch.equal(codes[:3], r.source_codes[:3])
    # By default a completion is the best of 4 by the caption model (nothing after the hole to score).
    assert (len(r.scores), r.select) == (DEFAULT_CANDIDATES["complete"], "caption") == (4, "caption")
    alone = Editor(pipe.text_to_image).run(image, PROMPT, rows=3, seed=2)  # no caption model: one sample
    assert (len(alone.scores), alone.select) == (1, "suffix")
    assert torch.equal(alone.codes, r.candidate_codes[0])


def test_completion_keeps_any_raster_prefix(editor: Editor, image: Image.Image) -> None:
    assert int(prefix_grid(11, 8).reshape(-1).nonzero()[0]) == 11
    r = editor.run(image, PROMPT, prefix=11, seed=2)
    flat, source = r.codes.reshape(-1), r.source_codes.reshape(-1)
    assert torch.equal(flat[:11], source[:11]) and bool(r.regenerate.reshape(-1)[11:].all())
    rows = editor.run(image, PROMPT, rows=3, seed=2)
    assert torch.equal(editor.run(image, PROMPT, prefix=24, seed=2).codes, rows.codes)  # 3 rows of 8
    assert len(editor.run(image, PROMPT, prefix=11, seed=2, candidates=1).scores) == 1


def test_variations_resample_a_seeded_fraction(editor: Editor, image: Image.Image) -> None:
    a = editor.run(image, PROMPT, mode="vary", strength=0.25, seed=3)
    b = editor.run(image, PROMPT, strength=0.25, seed=3)
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
        ({"mask": np.full((32, 32), "x")}, ValueError, "dtype"),
        ({"box": (0, 0, 40, 8)}, ValueError, "box"),
        ({"box": "0,0,4"}, ValueError, "four integers"),
        ({}, ValueError, "exactly one region"),
        ({"box": (0, 0, 4, 4), "rows": 2}, ValueError, "exactly one region"),
        ({"mode": "complete", "box": (0, 0, 4, 4)}, ValueError, "does not take box"),
        ({"rows": 8}, ValueError, "keeps the whole"),
        ({"prefix": 64}, ValueError, "keeps the whole"),
        ({"prefix": 0}, ValueError, "prefix"),
        ({"strength": 0.0}, ValueError, "strength"),
        ({"mode": "outfill", "rows": 2}, ValueError, "mode"),
        ({"box": (0, 0, 4, 4), "grow": -1}, ValueError, "grow"),
        ({"rows": 2, "grow": 1}, ValueError, "widens an inpainting hole"),
        ({"box": (0, 0, 4, 4), "candidates": 0}, ValueError, "candidates"),
        ({"box": (0, 0, 4, 4), "candidates": 17}, ValueError, "limit"),
        ({"box": (0, 0, 4, 4), "select": "best"}, ValueError, "select"),
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
    rgba = Image.new("RGBA", (32, 32), (10, 200, 30, 0))  # alpha is dropped, not composited
    assert torch.equal(
        editor.layout(rgba, rows=2).codes, editor.t2i.image_tokenizer.encode([rgba.convert("RGB")])[0]
    )
    with pytest.raises(TypeError, match="PIL image"):
        editor.run(np.zeros((32, 32, 3)), PROMPT, box=(0, 0, 4, 4))


def test_cli_writes_png_and_settings(
    tiny_model_dir: Path, image: Image.Image, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.png"
    image.save(src)
    out = tmp_path / "out"
    args = ["edit", str(src), PROMPT, "--box", "0,0,16,16", "--seed", "4", "--out", str(out)]
    assert main([*args, "--model", str(tiny_model_dir), "--candidates", "2", "--select", "caption"]) == 0
    png = out / "in_inpaint.png"
    assert Image.open(png).size == (32, 32)
    settings = json.loads(png.with_suffix(".json").read_text())
    assert settings["seed"] == 4 and settings["mode"] == "inpaint" and settings["box"] == "0,0,16,16"
    assert settings["select"] == "caption" and settings["grow"] is None
    assert main(["edit", str(src), PROMPT, "--box", "1,2", "--model", str(tiny_model_dir)]) == 2
    assert "expects 4 comma-separated integers" in capsys.readouterr().err
    assert main(["edit", str(src), PROMPT, "--model", str(tiny_model_dir)]) == 2
    assert "exactly one region" in capsys.readouterr().err
    model = ["--model", str(tiny_model_dir), "--out", str(out), "--seed", "1"]
    assert main(["edit", str(src), PROMPT, "--prefix", "20", *model]) == 0
    assert json.loads((out / "in_complete.json").read_text())["prefix"] == 20


def test_a_negative_prompt_is_the_edit_s_unconditional_row(editor: Editor, image: Image.Image) -> None:
    """The prompt as its own negative cancels guidance: the codes of guidance 1, exactly."""
    kw = {"box": (8, 8, 24, 24), "candidates": 2, "seed": 3}
    plain = editor.run(image, PROMPT, guidance_scale=3.0, **kw)
    away = editor.run(image, PROMPT, guidance_scale=3.0, negative_prompt="a blue square", **kw)
    assert not torch.equal(away.candidate_codes, plain.candidate_codes)
    assert away.to_dict()["negative_prompt"] == "a blue square" and "negative_prompt" not in plain.to_dict()
    itself = editor.run(image, PROMPT, guidance_scale=3.0, negative_prompt=PROMPT, **kw)
    unguided = editor.run(image, PROMPT, guidance_scale=1.0, **kw)
    assert torch.equal(itself.candidate_codes, unguided.candidate_codes)
    with pytest.raises(ValueError, match="guidance_scale above 1"):
        editor.run(image, PROMPT, guidance_scale=1.0, negative_prompt="blue", **kw)
