"""``cogview caption``, ``cogview score`` and ``cogview upscale``: the image-input jobs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from cogview.checks import positive_int
from cogview.cli.common import output_folder, sampling_overrides
from cogview.images import open_image


def read_images(paths: list[str]) -> list[Image.Image]:
    """Open every image (RGB); a missing or unreadable file is an error that names it."""
    if not paths:
        raise ValueError("no images given")
    return [open_image(p) for p in paths]


def _pipeline(args: argparse.Namespace):  # noqa: ANN202 - imported lazily for a fast --help
    from cogview.pipeline import CogViewPipeline

    pipe = CogViewPipeline.from_pretrained(args.model, device=args.device)
    if getattr(args, "max_samples", None) is not None:
        pipe.max_samples = positive_int("--max-samples", args.max_samples)
    return pipe


def cmd_caption(args: argparse.Namespace) -> int:
    images = read_images(args.images)
    pipe = _pipeline(args)
    n = args.num_captions
    if n is None:  # the model's default (a converted CogView folder: image2text.sh's 8)
        n = 1 if (args.candidates or 1) > 1 or pipe.captioner is None else pipe.captioner.default_num_captions
    captions = pipe.caption(
        images,
        args.language,
        n,
        candidates=args.candidates,
        seed=args.seed,
        max_batch_size=args.max_batch_size,
        **({} if args.beams is None else {"beams": args.beams}),
        **sampling_overrides(args),
    )
    records = [
        {"image": path, "captions": captions[i * n : (i + 1) * n]} for i, path in enumerate(args.images)
    ]
    if args.json:
        print(json.dumps(records, ensure_ascii=False, indent=2))
    else:
        for r in records:
            for c in r["captions"]:
                print(f"{r['image']}\t{c}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    images = read_images(args.images)
    pipe = _pipeline(args)
    scores = pipe.score(args.prompt, images, max_batch_size=args.max_batch_size)
    losses = pipe.caption_loss(args.prompt, images, max_batch_size=args.max_batch_size)
    order = sorted(range(len(images)), key=lambda i: -scores[i])
    records = [
        {"image": args.images[i], "rank": r + 1, "score": scores[i], "caption_loss": losses[i]}
        for r, i in enumerate(order)
    ]
    if args.json:
        print(json.dumps({"prompt": args.prompt, "images": records}, ensure_ascii=False, indent=2))
    else:
        print("rank\tscore\tcaption_loss\timage")
        for r in records:
            print(f"{r['rank']}\t{r['score']:.3f}\t{r['caption_loss']:.3f}\t{r['image']}")
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    images = read_images(args.images)
    out = output_folder(args.out)
    pipe = _pipeline(args)
    upscaled = pipe.upscale(
        images,
        args.prompt,
        seed=args.seed,
        max_batch_size=args.max_batch_size,
        progress=not args.no_progress,
        **sampling_overrides(args),
    )
    for path, im in zip(args.images, upscaled, strict=True):
        target = out / f"{Path(path).stem}_x2.png"
        im.save(target)
        print(f"{path} -> {target} ({im.size[0]}x{im.size[1]})")
    print(f"{len(upscaled)} images in {out}", file=sys.stderr)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model folder (default: the model shipped with cogview)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=16,
        help="most images per pass; halved on out-of-memory (default: 16)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "caption",
        help="describe images in Chinese or English",
        description="Image-to-text with the model's captioning transformer (layout [BASE] [BOI1] codes "
        "[EOI1] [ROI1] text [EOT]). Prints IMAGE<TAB>caption per caption. Default decoding is greedy "
        "(the most likely caption by piece); --beams N searches for the N most likely whole captions; "
        "--top-k above 1 samples varied captions, seeded by --seed.",
    )
    p.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files (any size: resized and center-cropped)"
    )
    p.add_argument(
        "--language", "-l", choices=("zh", "en"), default="zh", help="caption language (default: zh)"
    )
    p.add_argument(
        "-n",
        "--num-captions",
        type=int,
        help="captions per image (default: the model's: 1, or 8 for converted CogView weights as image2text.sh)",
    )
    p.add_argument(
        "--candidates",
        type=int,
        help="find the N most likely captions (a beam search of width N; with sampling flags: the greedy "
        "caption and N-1 sampled ones) and keep the one the captioner and the text-to-image model agree "
        "on best (needs both jobs; one caption per image; default: the model's post_selection.captions "
        "for one unsampled caption, else 1 = greedy)",
    )
    p.add_argument(
        "--beams",
        type=int,
        help="beam search of this width instead of greedy decoding: prints the -n most likely captions "
        "(no sampling flags; default 1 = greedy)",
    )
    p.add_argument("--seed", type=int, help="random seed for sampled captions")
    p.add_argument("--temperature", type=float, help="divide logits by this (default: model's)")
    p.add_argument(
        "--top-k", type=int, help="sample among the k most likely pieces; 1 = greedy (default: model's)"
    )
    p.add_argument("--top-p", type=float, help="nucleus sampling mass; 0 or 1 = off (default: model's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tab-separated lines")
    p.add_argument(
        "--max-samples",
        type=int,
        help="the most captions one run may draw (images x num-captions); refused above it (default: 256)",
    )
    _common(p)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser(
        "score",
        help="rank images by how well they fit a prompt (caption likelihood)",
        description="CogView's post-selection score: log p(PROMPT | image) from the captioning "
        "transformer in one batched pass (higher fits better), and CapLoss, the mean cross-entropy "
        "per prompt token (lower is better). Prints the images best first.",
    )
    p.add_argument("prompt", metavar="PROMPT", help="the text to score (Chinese or English)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="candidate image files")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "upscale",
        help="upscale images 2x by super-resolution in token space",
        description="Tokenise each image at its own size (shorter side, rounded to whole codes) and "
        "generate the codes of the 2x image window by window, conditioned on the low-resolution codes "
        "(CogView's sliding-window magnify). Works on any image, not only generated ones. Writes "
        "OUT/NAME_x2.png.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--prompt", help="optional text describing the image")
    p.add_argument("--out", default="out/upscale", help="output folder (default: out/upscale)")
    p.add_argument("--seed", type=int, default=0, help="random seed when sampling (default: 0)")
    p.add_argument("--temperature", type=float, help="divide logits by this (default: model's)")
    p.add_argument(
        "--top-k", type=int, help="sample among the k most likely codes; 1 = greedy (default: model's)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p)
    p.set_defaults(func=cmd_upscale)
