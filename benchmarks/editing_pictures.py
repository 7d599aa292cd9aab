"""The editing pictures of docs/editing.md and the README, drawn with the shipped model.

* ``editing_modes.png``: one row per mode (inpaint, complete, outpaint by shift, outpaint by pad,
  vary); columns: input, the code cells sampled (white), output. 4x nearest upscaling.
* ``editing_cells.png``: how a pixel mask becomes code cells on the shipped tokenizer (32 px, 16x16
  codes of 2 px): left, the mask (red) over the image and the code grid; right, the cells it
  touches (blue) and the ring the default ``grow=1`` adds (yellow).

    python benchmarks/editing_pictures.py [--out docs/images]

Seeds are fixed, so reruns draw the same pictures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from cogview import datasets
from cogview.datasets import digits, shapes
from cogview.generation.editing import Editor, EditResult, box_mask, grid_mask, grow_grid
from cogview.images import make_grid
from cogview.pipeline import CogViewPipeline

SCALE = 4  # nearest upscaling of the 32 px images in editing_modes.png
CELL_SCALE = 12  # pixels per image pixel in editing_cells.png


def cells_image(regen: torch.Tensor, size: int) -> Image.Image:
    """``[g, g]`` bool -> a ``size`` px picture, white where sampled."""
    grid = Image.fromarray(regen.numpy().astype(np.uint8) * 255, mode="L")
    return grid.resize((size, size), Image.Resampling.NEAREST).convert("RGB")


def mode_rows(editor: Editor) -> list[tuple[str, Image.Image, EditResult]]:
    """(label, input, result) of one edit per mode, seed 0."""
    scene = shapes.sample_scene("test", 2)
    recoloured = {**scene.attributes, "colour": "green"}
    cx, cy = scene.centre
    h = scene.size / 2
    box = (int(cx - h), int(cy - h), int(cx + h) + 1, int(cy + h) + 1)
    image = shapes.render_scene(scene, 32)
    left = next(s for s in (shapes.sample_scene("test", i) for i in range(100)) if s.position == "left")
    moved = {**left.attributes, "position": "center"}
    digit = next(d for d in datasets.load("digits", "test") if d.attributes["digit"] == 6)
    vary = shapes.sample_scene("test", 5)
    return [
        ("inpaint", image, editor.run(image, shapes.canonical_caption(recoloured, "en"), box=box, seed=0)),
        ("complete", digit.image, editor.run(digit.image, digits.canonical_caption(6, "zh"), rows=5, seed=0)),
        (
            "outpaint (shift)",
            shapes.render_scene(left, 32),
            editor.run(
                shapes.render_scene(left, 32), shapes.canonical_caption(moved, "en"), shift=(8, 0), seed=0
            ),
        ),
        (
            "outpaint (pad)",
            image,
            editor.run(image, shapes.canonical_caption(scene.attributes, "zh"), pad=4, seed=0),
        ),
        (
            "vary",
            shapes.render_scene(vary, 32),
            editor.run(
                shapes.render_scene(vary, 32),
                shapes.canonical_caption(vary.attributes, "zh"),
                strength=0.3,
                seed=0,
            ),
        ),
    ]


def cells_picture(image: Image.Image, mask: np.ndarray, grid_size: int) -> Image.Image:
    """Left: the image (faded) with the pixel mask in red over the code grid. Right: the code grid
    with the cells the mask touches (blue) and the ring the default grow adds (yellow)."""
    size = image.size[0]
    k, cell = CELL_SCALE, size // grid_size
    touched = grid_mask(mask, size, grid_size).numpy()
    ring = grow_grid(torch.from_numpy(touched), 1).numpy() & ~touched
    faded = Image.blend(image.convert("RGB"), Image.new("RGB", image.size, "white"), 0.6)
    left = faded.resize((size * k, size * k), Image.Resampling.NEAREST)
    right = Image.new("RGB", left.size, "white")
    for panel in (left, right):
        draw = ImageDraw.Draw(panel)
        if panel is left:
            for y, x in np.argwhere(mask):
                draw.rectangle((x * k, y * k, (x + 1) * k - 1, (y + 1) * k - 1), fill=(220, 30, 30))
        else:
            for cells, colour in ((touched, (60, 90, 230)), (ring, (245, 200, 0))):
                for r, c in np.argwhere(cells):
                    draw.rectangle(
                        (c * cell * k, r * cell * k, (c + 1) * cell * k, (r + 1) * cell * k), fill=colour
                    )
        for i in range(size + 1):  # pixel lines faint, code-cell lines dark
            shade = (60, 60, 60) if i % cell == 0 else (200, 200, 200)
            draw.line((i * k, 0, i * k, size * k), fill=shade, width=2 if i % cell == 0 else 1)
            draw.line((0, i * k, size * k, i * k), fill=shade, width=2 if i % cell == 0 else 1)
    return make_grid([left, right], columns=2, pad=8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/images", help="folder for the PNGs (default: docs/images)")
    args = p.parse_args()
    torch.set_num_threads(1)
    pipe = CogViewPipeline.from_pretrained()
    editor = Editor(pipe.text_to_image, pipe.captioner)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tiles = []
    for label, image, r in mode_rows(editor):
        size = r.image.size[0]
        tiles += [image.convert("RGB").resize((size, size)), cells_image(r.regenerate, size), r.image]
        print(f"{label}: {r.prompt!r}, {int(r.regenerate.sum())} of {r.regenerate.numel()} codes sampled")
    make_grid(tiles, columns=3, scale=SCALE).save(out / "editing_modes.png")
    tok = editor.t2i.image_tokenizer
    scene = shapes.sample_scene("test", 2)
    mask = box_mask((13, 19, 20, 27), (32, 32)) & ~box_mask((13, 19, 16, 22), (32, 32))  # odd edges, a notch
    cells_picture(shapes.render_scene(scene, tok.image_size), mask, tok.grid_size).save(
        out / "editing_cells.png"
    )


if __name__ == "__main__":
    main()
