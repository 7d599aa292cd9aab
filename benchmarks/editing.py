"""Token-space editing with the shipped model on held-out test data, checked by our own checkers.

* Recolour by inpainting: mask the shape's bounding box in a shapes test scene and prompt the
  canonical caption with another shape colour (not the background's). Success: ``check_shapes``
  reads the new colour and the old shape, background and position. Also the PSNR outside the
  regenerated cells against the tokenizer's reconstruction of the input (the seams: the decoder
  is convolutional, so pixels near the hole change too).
* Digit completion: keep the top third of the code rows of a test digit and prompt its own digit;
  success: ``DigitClassifier.fit_default`` reads it.

Post-selection (``--candidates``, scored on the known codes after the hole) against one sample.

    python benchmarks/editing.py [-n 20] [--langs en zh] [--candidates 1 4]

Prints a table and writes benchmarks/results/editing.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cogview import datasets
from cogview.datasets import digits, shapes
from cogview.datasets.checkers import DigitClassifier, check_shapes
from cogview.generation.editing import Editor
from cogview.images import psnr
from cogview.pipeline import CogViewPipeline


def shape_box(scene: shapes.Scene, size: int) -> tuple[int, int, int, int]:
    """The shape's bounding box in pixels of a ``size`` px rendering (rounded outwards)."""
    k = size / shapes.UNIT
    cx, cy = scene.centre
    h = scene.size / 2
    return (
        max(0, int((cx - h) * k)),
        max(0, int((cy - h) * k)),
        min(size, int(-(-(cx + h) * k // 1))),
        min(size, int(-(-(cy + h) * k // 1))),
    )


def recolour(editor: Editor, n: int, lang: str, candidates: int) -> dict[str, float]:
    """Success rate and mean PSNR outside the mask over ``n`` test scenes."""
    tok = editor.t2i.image_tokenizer
    ok, psnrs = 0, []
    for i in range(n):
        scene = shapes.sample_scene("test", i)
        colours = [c for c in shapes.COLOURS if c not in (scene.colour, scene.background)]
        target = {**scene.attributes, "colour": colours[i % len(colours)]}
        image = shapes.render_scene(scene, tok.image_size)
        prompt = shapes.canonical_caption(target, lang)
        r = editor.run(image, prompt, box=shape_box(scene, tok.image_size), candidates=candidates, seed=i)
        ok += check_shapes(r.image, target)["all"]
        cell = tok.image_size // tok.grid_size
        keep = (~r.regenerate).repeat_interleave(cell, 0).repeat_interleave(cell, 1)  # [S, S]
        out = tok.decode_pixels(r.codes)[0][:, keep].cpu()  # [3, kept pixels]
        ref = tok.decode_pixels(r.source_codes)[0][:, keep].cpu()
        psnrs.append(float(psnr(out[None], ref[None]).clamp(max=100)))
    return {"success": ok / n, "psnr_outside_db": sum(psnrs) / n}


def complete_digits(editor: Editor, classifier: DigitClassifier, n: int, lang: str) -> dict[str, float]:
    """Rate at which the classifier reads the prompted digit, own digit and a look-alike (1 -> 7, 9 -> 8)."""
    tok = editor.t2i.image_tokenizer
    rows = round(tok.grid_size / 3)
    test = datasets.load("digits", "test")
    own, alike, n_alike = 0, 0, 0
    for i in range(n):
        example = test[i]
        digit = example.attributes["digit"]
        r = editor.run(
            example.image, digits.canonical_caption(digit, lang), mode="complete", rows=rows, seed=i
        )
        own += classifier.predict([r.image])[0] == digit
        if digit in (1, 9):
            other = {1: 7, 9: 8}[digit]
            prompt = digits.canonical_caption(other, lang)
            r = editor.run(example.image, prompt, mode="complete", rows=rows, seed=i)
            alike += classifier.predict([r.image])[0] == other
            n_alike += 1
    return {"success": own / n, "lookalike_success": alike / max(1, n_alike), "lookalike_n": n_alike}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=20, help="test images per cell")
    p.add_argument("--langs", nargs="+", default=["en", "zh"], choices=("en", "zh"))
    p.add_argument("--candidates", nargs="+", type=int, default=[1, 4], help="recolour post-selection sizes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    editor = Editor(CogViewPipeline.from_pretrained().text_to_image)
    classifier = DigitClassifier.fit_default()
    rows = []
    for lang in args.langs:
        for c in args.candidates:
            t0 = time.perf_counter()
            rows.append(
                {"task": "recolour", "lang": lang, "candidates": c, **recolour(editor, args.n, lang, c)}
            )
            rows[-1]["seconds"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        rows.append(
            {
                "task": "digit completion",
                "lang": lang,
                "candidates": 1,
                **complete_digits(editor, classifier, args.n, lang),
            }
        )
        rows[-1]["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{'task':<18}{'lang':<6}{'cand':>5}{'success':>9}  extra")
    for r in rows:
        extra = {k: v for k, v in r.items() if k not in ("task", "lang", "candidates", "success")}
        print(f"{r['task']:<18}{r['lang']:<6}{r['candidates']:>5}{r['success']:>9.2f}  {extra}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"n_per_cell": args.n, "model": "shipped", "rows": rows}
    (out / "editing.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
