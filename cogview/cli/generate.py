"""``cogview generate``: text prompts -> PNG images, a grid per prompt and a JSON of exact settings."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path
from typing import Any

import torch

from cogview.checks import positive_int
from cogview.cli.common import output_folder, sampling_overrides
from cogview.images import make_grid

MAX_GRID_SCALE = 32  # a grid of 16 images of 32 px at 32x is already 16k pixels wide


def read_prompts(args: argparse.Namespace) -> list[str]:
    """Prompts from the command line, then from ``--prompts-file`` (one per line, blank lines skipped)."""
    prompts = list(args.prompts or [])
    if args.prompts_file:
        path = Path(args.prompts_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read prompts file {path}: {e}") from None
        from_file = [line.strip() for line in lines if line.strip()]
        if not from_file:
            raise ValueError(f"prompts file {path} holds no prompts (one per line)")
        prompts += from_file
    if not prompts:
        raise ValueError("no prompts: give PROMPT arguments or --prompts-file FILE")
    for i, p in enumerate(prompts):
        if not p.strip():
            raise ValueError(f"prompt {i + 1} is empty; give some text to draw (e.g. 'a red circle')")
    return prompts


def cmd_generate(args: argparse.Namespace) -> int:
    from cogview.generation.text_to_image import grid_columns
    from cogview.pipeline import CogViewPipeline

    prompts = read_prompts(args)
    positive_int("--grid-scale", args.grid_scale, most=MAX_GRID_SCALE)
    out = output_folder(args.out)
    pipe = CogViewPipeline.from_pretrained(args.model, device=args.device)
    if args.max_samples is not None:
        pipe.max_samples = positive_int("--max-samples", args.max_samples)
    seed = secrets.randbits(62) if args.seed is None else args.seed
    if args.candidates is not None and args.candidates > 1 and pipe.captioner is None:
        raise ValueError("--candidates needs a model that also serves image_to_text (captioning)")
    if args.upscale and pipe.super_resolution is None:
        raise ValueError("--upscale needs a model that also serves super_resolution")
    results = pipe.generate_results(
        prompts,
        args.num_images,
        candidates=args.candidates,
        selection=args.selection,
        seed=seed,
        max_batch_size=args.max_batch_size,
        dtype=args.dtype,
        progress=not args.no_progress,
        compile=args.compile,
        negative_prompt=args.negative_prompt,
        modifiers=not args.no_modifiers,
        **sampling_overrides(args),
    )
    records: list[dict[str, Any]] = []
    for k, result in enumerate(results):
        images = result.images
        record = result.to_dict()
        if args.upscale:
            images = pipe.upscale(images, result.prompt, seed=seed, max_batch_size=args.max_batch_size)
            record["upscaled"] = True
        files = []
        for i, image in enumerate(images):
            name = f"{k:03d}_{i:03d}.png"
            image.save(out / name)
            files.append(name)
        grid = f"{k:03d}_grid.png"
        scale = max(1, args.grid_scale // (2 if args.upscale else 1))
        make_grid(images, grid_columns(len(images)), scale=scale).save(out / grid)
        records.append({**record, "files": files, "grid": grid})
        print(f"{grid}: {result.prompt}")
    report = {
        "model": str(Path(args.model).resolve()) if args.model else "default",
        "seed": seed,
        "num_images": args.num_images,
        "candidates": pipe.candidates if args.candidates is None else args.candidates,
        "selection": pipe.selection if args.selection is None else args.selection,
        "upscale": args.upscale,
        "max_batch_size": args.max_batch_size,
        "dtype": str(pipe.text_to_image.resolved_dtype(args.dtype)).removeprefix("torch."),
        "compile": args.compile,
        "device": str(pipe.transformer.tok_embeddings.weight.device),
        "torch": torch.__version__,
        "prompts": records,
    }
    (out / "generate.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(f"{sum(len(r.images) for r in results)} images and generate.json in {out}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate images from Chinese or English text prompts",
        description="Text-to-image with a CogView model folder, optionally reranked by caption likelihood (--candidates) and upscaled (--upscale): generate -> rerank -> upscale. Writes OUT/KKK_III.png per image, "
        "OUT/KKK_grid.png per prompt and OUT/generate.json with the exact settings and seeds; the same "
        "prompt, seed and settings give the same PNG bytes. Sampling flags left out take the model's "
        "defaults for the prompt's language (pipeline.json).",
    )
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="text prompts (quote each one)")
    p.add_argument("--prompts-file", metavar="FILE", help="UTF-8 file with one prompt per line")
    p.add_argument("-n", "--num-images", type=int, default=4, help="images per prompt (default: 4)")
    p.add_argument("--seed", type=int, help="random seed (default: a random one, written to generate.json)")
    p.add_argument("--out", default="out/generate", help="output folder (default: out/generate)")
    p.add_argument("--model", help="model folder (default: the model shipped with cogview)")
    p.add_argument("--temperature", type=float, help="divide logits by this (default: model's)")
    p.add_argument(
        "--top-k", type=int, help="sample among the k most likely codes; 0 = all (default: model's)"
    )
    p.add_argument("--top-p", type=float, help="nucleus sampling mass; 0 or 1 = off (default: model's)")
    p.add_argument(
        "--guidance-scale", type=float, help="classifier-free guidance; 1 = off (default: model's)"
    )
    p.add_argument(
        "--min-p",
        type=float,
        help="drop codes the conditional model finds less than MIN_P times as likely as its best; "
        "keeps strong guidance from promoting implausible codes; 0 = off (default: model's)",
    )
    p.add_argument(
        "--negative-prompt",
        metavar="TEXT",
        help="what to steer away from, for every prompt: guidance's unconditional row draws TEXT "
        "instead of the empty prompt (needs guidance on, which the shipped model's default is)",
    )
    p.add_argument(
        "--no-modifiers",
        action="store_true",
        help="draw a prompt holding one of the model's modifier phrases (the shipped model: a skin tone, "
        "e.g. 'waving hand dark skin tone') as given, instead of drawing its base and mapping the codes",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=16,
        help="most images decoded at once; halved automatically on out-of-memory (default: 16)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="compute precision (default: the weights' own if lower than float32, else float32; float16 only on GPU)",
    )
    p.add_argument(
        "--candidates",
        type=int,
        help="draw N candidates per image and keep the one whose caption likelihood of the prompt is "
        "highest (CogView's post-selection; needs a captioning model; costs N samples per image); 1 = off "
        "(default: the model's, post_selection in pipeline.json; the shipped model: 4)",
    )
    p.add_argument(
        "--selection",
        choices=("caption", "joint"),
        help="how --candidates are scored: caption = the caption model's log p(prompt | image) (CogView's); "
        "joint = that plus the text-to-image model's own log p(image | prompt) (default: the model's, "
        "post_selection.score in pipeline.json; the shipped model: joint)",
    )
    p.add_argument(
        "--upscale",
        action="store_true",
        help="upscale each kept image 2x in token space (needs a super-resolution model)",
    )
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="decode with a fixed-shape step: captured in CUDA graphs on a GPU, torch.compile elsewhere "
        "(tens of seconds to compile per batch size, and measured no faster on a CPU; off by default)",
    )
    p.add_argument(
        "--grid-scale",
        type=int,
        default=4,
        help=f"upscale factor of the grid images, 1 to {MAX_GRID_SCALE} (default: 4)",
    )
    p.add_argument(
        "--max-samples",
        type=int,
        help="the most images one run may draw (prompts x num-images x candidates); refused above it "
        "so that a typo cannot fill the memory (default: 256)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)
