"""Token-space editing with the shipped model on held-out test data, checked by our own checkers.

* Recolour by inpainting: mask the shape's bounding box in a shapes test scene and prompt the
  canonical caption with another shape colour (not the background's). Success: ``check_shapes``
  reads the new colour and the old shape, background and position. Variants (``--variants``):
  the hole grown by code cells, sampling settings, post-selection by the known suffix or by the
  caption model.
* Digit completion: keep the top third of the code rows of a test digit and prompt its own digit
  (and a look-alike: 1 -> 7, 9 -> 8); success: ``DigitClassifier.fit_default`` reads it.
* Outpainting by shift: move a shapes test scene 8 px (4 code cells) towards the centre (a centred
  shape in turn right, left, down, up), so a strip of the old scene leaves the grid, and fill the
  new strip from the caption of the moved scene; success: ``check_shapes`` reads the moved scene.
* Outpainting by pad: shrink the scene into the canvas with 4 px on every side and fill the border.

Seams: the pixel error in bands of 1 and 2 code cells on each side of the hole's edge and further
away; kept cells against the tokenizer's reconstruction of the canvas, generated cells against a
clean render of the target scene (beside the tokenizer's own error on that render, its floor).

    python benchmarks/editing.py [-n 100] [--langs en zh] [--tasks ...] [--variants ...]

Prints a table and writes benchmarks/results/editing.json (``--name`` changes the file name).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps

from cogview import datasets
from cogview.datasets import digits, shapes
from cogview.datasets.checkers import DigitClassifier, check_shapes, detect_shape_attributes
from cogview.generation.editing import DEFAULT_CANDIDATES, DEFAULT_GROW, Editor, EditResult, grow_grid
from cogview.images import to_tensor
from cogview.pipeline import CogViewPipeline

# Recolour variants: name -> Editor.run settings. "default" is what a call without settings does.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "one sample": {"candidates": 1},
    "default, suffix x4": {"candidates": 4, "select": "suffix"},
    "default, caption x4": {"candidates": 4, "select": "caption"},
    "grow 0": {"grow": 0},
    "grow 0, suffix x4": {"grow": 0, "candidates": 4, "select": "suffix"},
    "grow 0, caption x4": {"grow": 0, "candidates": 4, "select": "caption"},
    "grow 1": {"grow": 1},
    "grow 2": {"grow": 2},
    "grow 1, guidance 1": {"grow": 1, "guidance_scale": 1.0},
    "grow 1, guidance 2.5": {"grow": 1, "guidance_scale": 2.5},
    "grow 1, temperature 0.2": {"grow": 1, "temperature": 0.2},
    "grow 1, temperature 0.8": {"grow": 1, "temperature": 0.8},
}
DEFAULT_VARIANTS = ("default", "default, suffix x4", "default, caption x4")
TASKS = ("recolour", "digits", "outpaint-shift", "outpaint-pad")
SHIFT = 8  # pixels: 4 code cells of the shipped model, a quarter of the canvas
PAD = 4  # pixels on every side: 2 code cells
BANDS = ("kept 1 cell", "kept 2 cells", "kept far", "hole 1 cell", "hole 2 cells", "hole far")


def shape_box(scene: shapes.Scene, size: int) -> tuple[int, int, int, int]:
    """The shape's bounding box in pixels of a ``size`` px rendering (rounded outwards)."""
    k = size / shapes.UNIT
    cx, cy = scene.centre
    h = scene.size / 2
    return (
        max(0, int((cx - h) * k)),
        max(0, int((cy - h) * k)),
        min(size, math.ceil((cx + h) * k)),
        min(size, math.ceil((cy + h) * k)),
    )


def band_masks(regen: torch.Tensor, cell: int) -> dict[str, torch.Tensor]:
    """``[S, S]`` pixel masks of the cells 1, 2 and more code cells (8-connected) from the hole's edge."""
    kept, out = ~regen, {}
    for name, side, other in (("kept", kept, regen), ("hole", regen, kept)):
        near1, near2 = grow_grid(other, 1), grow_grid(other, 2)
        out[f"{name} 1 cell"] = side & near1
        out[f"{name} 2 cells"] = side & near2 & ~near1
        out[f"{name} far"] = side & ~near2
    return {k: v.repeat_interleave(cell, 0).repeat_interleave(cell, 1) for k, v in out.items()}


class Seams:
    """Squared pixel errors pooled over a task's items, per band: PSNR in dB at the end."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = {}  # key -> [sum of squared errors, pixel count]

    def add(self, key: str, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> None:
        """Pixels ``[3, S, S]`` of ``a`` and ``b`` in [0, 1] under ``mask`` ``[S, S]``."""
        err = (a.float() - b.float()).pow(2)[:, mask]  # [3, n]
        s = self.sums.setdefault(key, [0.0, 0])
        s[0] += float(err.sum())
        s[1] += err.numel()

    def psnr(self) -> dict[str, float]:
        return {k: round(10 * math.log10(n / max(e, 1e-10)), 2) for k, (e, n) in self.sums.items() if n}


def measure_seams(seams: Seams, editor: Editor, r: EditResult, reference: Image.Image | None) -> float:
    """Add ``r``'s bands to ``seams``; return the PSNR of the kept cells against the reconstruction."""
    tok = editor.t2i.image_tokenizer
    cell = tok.image_size // tok.grid_size
    out = tok.decode_pixels(r.codes[None])[0].cpu()  # [3, S, S]
    recon = tok.decode_pixels(r.source_codes[None])[0].cpu()
    bands = band_masks(r.regenerate, cell)
    for name in BANDS[:3]:
        seams.add(f"{name}: output vs reconstruction", out, recon, bands[name])
    if reference is not None:
        clean = to_tensor([reference])[0]  # [3, S, S]
        floor = tok.decode_pixels(tok.encode([reference]))[0].cpu()
        for name in BANDS[3:]:
            seams.add(f"{name}: output vs clean render", out, clean, bands[name])
            seams.add(f"{name}: tokenizer vs clean render", floor, clean, bands[name])
    keep = bands["kept 1 cell"] | bands["kept 2 cells"] | bands["kept far"]
    mse = float((out - recon).pow(2)[:, keep].mean()) if bool(keep.any()) else 0.0
    return min(100.0, 10 * math.log10(1 / max(mse, 1e-10)))


def run_items(
    editor: Editor,
    n: int,
    item: Callable[[int], tuple[Image.Image, str, dict[str, Any], dict[str, Any], Image.Image | None]],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Edit ``n`` items; ``item(i)`` gives (image, prompt, region, target attributes, clean render)."""
    ok, psnrs, seams = 0, [], Seams()
    for i in range(n):
        image, prompt, region, target, reference = item(i)
        r = editor.run(image, prompt, seed=i, **region, **settings)
        ok += check_shapes(r.image, target)["all"]
        psnrs.append(measure_seams(seams, editor, r, reference))
    return {"success": ok / n, "psnr_kept_db": round(sum(psnrs) / n, 2), "seams_psnr_db": seams.psnr()}


def recolour_item(lang: str) -> Callable[[int], tuple]:
    def item(i: int) -> tuple:
        scene = shapes.sample_scene("test", i)
        colours = [c for c in shapes.COLOURS if c not in (scene.colour, scene.background)]
        target = dataclasses.replace(scene, colour=colours[i % len(colours)])
        image = shapes.render_scene(scene, 32)
        prompt = shapes.canonical_caption(target.attributes, lang)
        return (
            image,
            prompt,
            {"box": shape_box(scene, 32)},
            target.attributes,
            shapes.render_scene(target, 32),
        )

    return item


def shift_of(scene: shapes.Scene, i: int) -> tuple[int, int]:
    """``SHIFT`` px towards the centre; a centred shape goes right, left, down, up in turn."""
    towards = {"left": (SHIFT, 0), "right": (-SHIFT, 0), "top": (0, SHIFT), "bottom": (0, -SHIFT)}
    cycle = [(SHIFT, 0), (-SHIFT, 0), (0, SHIFT), (0, -SHIFT)]
    return towards.get(scene.position, cycle[i % 4])


def expected(scene: shapes.Scene, reference: Image.Image) -> dict[str, Any]:
    """The scene's attributes with the position the checker reads on the clean render."""
    return {**scene.attributes, "position": detect_shape_attributes(reference)["position"]}


def shift_item(lang: str) -> Callable[[int], tuple]:
    def item(i: int) -> tuple:
        scene = shapes.sample_scene("test", i)
        dx, dy = shift_of(scene, i)
        reference = shapes.render_scene(dataclasses.replace(scene, dx=scene.dx + dx, dy=scene.dy + dy), 32)
        target = expected(scene, reference)
        prompt = shapes.canonical_caption(target, lang)
        return shapes.render_scene(scene, 32), prompt, {"shift": (dx, dy)}, target, reference

    return item


def pad_item(lang: str) -> Callable[[int], tuple]:
    def item(i: int) -> tuple:
        scene = shapes.sample_scene("test", i)
        inner = shapes.render_scene(scene, 32 - 2 * PAD)
        reference = ImageOps.expand(inner, border=PAD, fill=shapes.PALETTE[scene.background][0])
        target = expected(scene, reference)
        prompt = shapes.canonical_caption(target, lang)
        return shapes.render_scene(scene, 32), prompt, {"pad": PAD}, target, reference

    return item


def complete_digits(
    editor: Editor, classifier: DigitClassifier, n: int, lang: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """Rate at which the classifier reads the prompted digit, own digit and a look-alike (1 -> 7, 9 -> 8)."""
    tok = editor.t2i.image_tokenizer
    rows = round(tok.grid_size / 3)
    test = datasets.load("digits", "test")
    own, alike, n_alike, seams, psnrs = 0, 0, 0, Seams(), []
    for i in range(n):
        example = test[i]
        digit = example.attributes["digit"]
        prompt = digits.canonical_caption(digit, lang)
        r = editor.run(example.image, prompt, rows=rows, seed=i, **settings)
        own += classifier.predict([r.image])[0] == digit
        psnrs.append(measure_seams(seams, editor, r, None))
        if digit in (1, 9):
            other = {1: 7, 9: 8}[digit]
            r = editor.run(
                example.image, digits.canonical_caption(other, lang), rows=rows, seed=i, **settings
            )
            alike += classifier.predict([r.image])[0] == other
            n_alike += 1
    return {
        "success": own / n,
        "psnr_kept_db": round(sum(psnrs) / n, 2),
        "seams_psnr_db": seams.psnr(),
        "lookalike_success": round(alike / max(1, n_alike), 3),
        "lookalike_n": n_alike,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=20, help="test items per cell (default: 20)")
    p.add_argument("--langs", nargs="+", default=["en", "zh"], choices=("en", "zh"))
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument(
        "--variants",
        nargs="+",
        default=list(DEFAULT_VARIANTS),
        choices=list(VARIANTS),
        help=f"recolour settings to compare (default: {' / '.join(DEFAULT_VARIANTS)})",
    )
    p.add_argument(
        "--digit-variants",
        nargs="+",
        default=["default"],
        choices=["default", "one sample", "default, caption x4"],
        help="completion settings to compare (default: default, the best of 4 by the caption model; "
        "the suffix is empty there)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="editing.json", help="result file name (default: editing.json)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = CogViewPipeline.from_pretrained()
    editor = Editor(pipe.text_to_image, pipe.captioner)
    classifier = DigitClassifier.fit_default() if "digits" in args.tasks else None
    cells: list[tuple[str, str, str, Callable[[], dict[str, Any]]]] = []
    for lang in args.langs:
        if "recolour" in args.tasks:
            for v in args.variants:
                cells.append(
                    (
                        "recolour",
                        lang,
                        v,
                        partial(run_items, editor, args.n, recolour_item(lang), VARIANTS[v]),
                    )
                )
        if "digits" in args.tasks:
            for v in args.digit_variants:
                run = partial(complete_digits, editor, classifier, args.n, lang, VARIANTS[v])
                cells.append(("digit completion", lang, v, run))
        if "outpaint-shift" in args.tasks:
            cells.append(
                ("outpaint shift", lang, "default", partial(run_items, editor, args.n, shift_item(lang), {}))
            )
        if "outpaint-pad" in args.tasks:
            cells.append(
                ("outpaint pad", lang, "default", partial(run_items, editor, args.n, pad_item(lang), {}))
            )
    print(f"{'task':<18}{'':<4}{'variant':<26}{'success':>7}{'kept':>9}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for task, lang, variant, run in cells:
        t0 = time.perf_counter()
        r = {"task": task, "lang": lang, "variant": variant, **run()}
        r["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(r)
        print(f"{task:<18}{lang:<4}{variant:<26}{r['success']:>7.2f}{r['psnr_kept_db']:>6.1f} dB", flush=True)
        record = {
            "n_per_cell": args.n,
            "model": "shipped",
            "defaults": {"grow": DEFAULT_GROW, "candidates": DEFAULT_CANDIDATES},
            "shift_px": SHIFT,
            "pad_px": PAD,
            "variants": {v: VARIANTS[v] for v in {*args.variants, *args.digit_variants}},
            "rows": rows,
        }
        (out / args.name).write_text(
            json.dumps(record, indent=2, ensure_ascii=False) + "\n"
        )  # after every cell


if __name__ == "__main__":
    main()
