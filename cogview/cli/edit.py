"""``cogview edit``: inpaint, complete, outpaint or vary an image from a prompt, in token space
(docs/editing.md)."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path

from cogview.cli.common import output_folder, sampling_overrides
from cogview.cli.jobs import _common, _pipeline
from cogview.images import open_image

REGION_FLAGS = ("mask", "box", "rows", "prefix", "shift", "pad", "strength")


def parse_ints(text: str, flag: str, counts: tuple[int, ...]) -> int | tuple[int, ...]:
    """``"A,B,..."`` -> ints, as many as one of ``counts`` allows (one int stays an int)."""
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in counts:
        want = " or ".join(str(c) for c in counts)
        raise ValueError(f"{flag} expects {want} comma-separated integers, got {text!r}")
    return values[0] if len(values) == 1 else values


def parse_box(text: str) -> tuple[int, int, int, int]:
    """``"L,T,R,B"`` -> four ints (pixels of the input image; right and bottom exclusive)."""
    return parse_ints(text, "--box LEFT,TOP,RIGHT,BOTTOM", (4,))  # type: ignore[return-value]


def cmd_edit(args: argparse.Namespace) -> int:
    from cogview.generation.editing import region_mode  # torch: only once the command runs

    region = {
        "mask": None if args.mask is None else open_image(args.mask).convert("L"),
        "box": None if args.box is None else parse_box(args.box),
        "rows": args.rows,
        "prefix": args.prefix,
        "shift": None if args.shift is None else parse_ints(args.shift, "--shift DX,DY", (2,)),
        "pad": None if args.pad is None else parse_ints(args.pad, "--pad", (1, 4)),
        "strength": args.strength,
    }
    mode = region_mode(args.mode, **region)
    image = open_image(args.image)
    out = output_folder(args.out)
    seed = secrets.randbits(62) if args.seed is None else args.seed
    pipe = _pipeline(args)
    result = pipe.edit(
        image,
        args.prompt,
        region.pop("mask"),
        mode=mode,
        grow=args.grow,
        candidates=args.candidates,
        select=args.select,
        seed=seed,
        negative_prompt=args.negative_prompt,
        **region,
        **sampling_overrides(args),
    )
    target = out / f"{Path(args.image).stem}_{mode}.png"
    result.save(target)
    settings = {
        "image": args.image,
        "prompt": args.prompt,
        "mode": mode,
        **{flag: getattr(args, flag) for flag in REGION_FLAGS},
        "grow": args.grow,
        "candidates": args.candidates,
        "select": args.select,
        "seed": seed,
        "negative_prompt": args.negative_prompt,
        "sampling_overrides": sampling_overrides(args),
        "output": str(target),
    }
    target.with_suffix(".json").write_text(
        json.dumps(settings, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    print(f"{args.image} -> {target}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "edit",
        help="inpaint, complete, outpaint or vary an image from a prompt (token space)",
        description="Tokenise IMAGE (resized and center-cropped to the model's size), keep some of its "
        "codes and sample the others from PROMPT with the text-to-image model. Give one region: "
        "--mask or --box (inpaint: a code is regenerated if any pixel of its cell is masked), --rows or "
        "--prefix (complete: keep the first N code rows or codes in raster order), --shift or --pad "
        "(outpaint: move or shrink the image on the canvas, fill the cells it left) or --strength "
        "(vary: re-sample that fraction of the codes). Kept pixels are the tokenizer's reconstruction. "
        "Writes OUT/NAME_MODE.png and a JSON of the settings beside it.",
    )
    p.add_argument("image", metavar="IMAGE", help="the image to edit")
    p.add_argument("prompt", metavar="PROMPT", help="what the edited image shows (Chinese or English)")
    p.add_argument(
        "--mode",
        choices=("inpaint", "complete", "outpaint", "vary"),
        help="default: implied by the region flag",
    )
    region = p.add_argument_group("region (exactly one)")
    region.add_argument("--mask", help="mask image of IMAGE's size; non-zero pixels are regenerated")
    region.add_argument(
        "--box", help="LEFT,TOP,RIGHT,BOTTOM pixels of IMAGE to regenerate (right/bottom exclusive)"
    )
    region.add_argument("--rows", type=int, help="completion: code rows kept from the top")
    region.add_argument("--prefix", type=int, help="completion: codes kept in raster order (row by row)")
    region.add_argument(
        "--shift",
        help="outpainting: DX,DY pixels to move the image by on the model's canvas (right/down positive; "
        "write --shift=-8,0 for a negative first value), rounded to whole code cells",
    )
    region.add_argument(
        "--pad",
        help="outpainting: N or LEFT,TOP,RIGHT,BOTTOM pixels of new canvas around the image, which is "
        "shrunk to fit (rounded to whole code cells)",
    )
    region.add_argument("--strength", type=float, help="variations: fraction of codes re-sampled, in (0, 1]")
    p.add_argument(
        "--grow",
        type=int,
        help="inpainting: widen the hole by this many code cells (default: 1; 0 keeps the mask's "
        "cells exactly; see docs/editing.md)",
    )
    p.add_argument(
        "--candidates",
        type=int,
        help="samples drawn, the best by --select kept (default: 4 for completion, else 1; see "
        "docs/editing.md)",
    )
    p.add_argument(
        "--select",
        choices=("suffix", "caption"),
        help="how candidates are scored: suffix = likelihood of the known codes after the hole, "
        "caption = the caption model's likelihood of PROMPT (default: caption for completion, else suffix)",
    )
    p.add_argument("--out", default="out/edit", help="output folder (default: out/edit)")
    p.add_argument("--seed", type=int, help="random seed (default: random, written to the JSON)")
    p.add_argument("--temperature", type=float, help="divide logits by this (default: model's)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely codes (default: model's)")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (default: model's)")
    p.add_argument(
        "--negative-prompt",
        metavar="TEXT",
        help="what to steer away from: guidance's unconditional row draws TEXT instead of the empty "
        "prompt (needs guidance on)",
    )
    _common(p)
    p.set_defaults(func=cmd_edit)
