"""``cogview edit``: inpaint, complete or vary an image from a prompt, in token space (docs/editing.md)."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path

from cogview.cli.common import output_folder, sampling_overrides
from cogview.cli.jobs import _common, _pipeline
from cogview.images import open_image

# Which region flag implies which mode when --mode is left out.
MODE_OF_FLAG = {"mask": "inpaint", "box": "inpaint", "rows": "complete", "strength": "vary"}


def parse_box(text: str) -> tuple[int, int, int, int]:
    """``"L,T,R,B"`` -> four ints (pixels of the input image; right and bottom exclusive)."""
    parts = text.split(",")
    try:
        box = tuple(int(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4:
        raise ValueError(f"--box expects four integers LEFT,TOP,RIGHT,BOTTOM, got {text!r}")
    return box  # type: ignore[return-value]


def cmd_edit(args: argparse.Namespace) -> int:
    given = [flag for flag in MODE_OF_FLAG if getattr(args, flag) is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of --mask, --box, --rows or --strength (the region to regenerate)")
    mode = args.mode or MODE_OF_FLAG[given[0]]
    image = open_image(args.image)
    region = {
        "mask": None if args.mask is None else open_image(args.mask).convert("L"),
        "box": None if args.box is None else parse_box(args.box),
        "rows": args.rows,
        "strength": args.strength,
    }
    out = output_folder(args.out)
    seed = secrets.randbits(62) if args.seed is None else args.seed
    pipe = _pipeline(args)
    result = pipe.edit(
        image,
        args.prompt,
        region.pop("mask"),
        mode=mode,
        candidates=args.candidates,
        seed=seed,
        **region,
        **sampling_overrides(args),
    )
    target = out / f"{Path(args.image).stem}_{mode}.png"
    result.save(target)
    settings = {
        "image": args.image,
        "prompt": args.prompt,
        "mode": mode,
        "mask": args.mask,
        "box": args.box,
        "rows": args.rows,
        "strength": args.strength,
        "candidates": args.candidates,
        "seed": seed,
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
        help="inpaint, complete or vary an image from a prompt (token space)",
        description="Tokenise IMAGE (resized and center-cropped to the model's size), keep some of its "
        "codes and sample the others from PROMPT with the text-to-image model. Region: --mask or --box "
        "(inpaint: a code is regenerated if any pixel of its cell is masked), --rows (complete: keep the "
        "first N code rows) or --strength (vary: re-sample that fraction of the codes). Pixels outside "
        "the region are the tokenizer's reconstruction. Writes OUT/NAME_MODE.png and a JSON of the "
        "settings beside it.",
    )
    p.add_argument("image", metavar="IMAGE", help="the image to edit")
    p.add_argument("prompt", metavar="PROMPT", help="what the edited image shows (Chinese or English)")
    p.add_argument(
        "--mode", choices=("inpaint", "complete", "vary"), help="default: implied by the region flag"
    )
    p.add_argument("--mask", help="mask image of IMAGE's size; non-zero pixels are regenerated")
    p.add_argument(
        "--box", help="LEFT,TOP,RIGHT,BOTTOM pixels of IMAGE to regenerate (right/bottom exclusive)"
    )
    p.add_argument("--rows", type=int, help="completion: code rows kept from the top")
    p.add_argument("--strength", type=float, help="variations: fraction of codes re-sampled, in (0, 1]")
    p.add_argument(
        "--candidates",
        type=int,
        help="samples drawn; the one that best predicts the known codes after the hole is kept "
        "(default: 1; see docs/editing.md)",
    )
    p.add_argument("--out", default="out/edit", help="output folder (default: out/edit)")
    p.add_argument("--seed", type=int, help="random seed (default: random, written to the JSON)")
    p.add_argument("--temperature", type=float, help="divide logits by this (default: model's)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely codes (default: model's)")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (default: model's)")
    _common(p)
    p.set_defaults(func=cmd_edit)
