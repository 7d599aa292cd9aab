"""``cogview prepare``: tokenise an image-caption dataset once into token shards for training."""

from __future__ import annotations

import argparse
import time

from cogview.cli.common import parse_overrides


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def cmd_prepare(args: argparse.Namespace) -> int:
    from cogview.data.prepare import prepare
    from cogview.tokenizers.image import ImageTokenizer
    from cogview.tokenizers.text import TextTokenizer

    image_tokenizer = ImageTokenizer.from_pretrained(args.image_tokenizer, device=args.device)
    text_tokenizer = TextTokenizer.from_pretrained(args.text_tokenizer)
    started = time.perf_counter()
    manifest = prepare(
        args.dataset,
        args.out,
        split=args.split,
        image_tokenizer=image_tokenizer,
        text_tokenizer=text_tokenizer,
        tasks=_names(args.tasks),
        languages=_names(args.languages),
        text_budget=args.text_budget,
        max_examples=args.max_examples,
        batch_size=args.batch_size,
        examples_per_shard=args.examples_per_shard,
        resume=args.resume,
        progress=not args.no_progress,
        sr_window=args.sr_window,
        allow_outside=args.allow_outside,
        dataset_options=parse_overrides(args.dataset_option, "--dataset-option"),
    )
    seconds = time.perf_counter() - started
    per_task = ", ".join(f"{t} {n}" for t, n in manifest["rows_per_task"].items())
    print(
        f"{manifest['total_rows']} rows of {manifest['seq_len']} tokens ({per_task}) in "
        f"{len(manifest['shards'])} shards -> {args.out}"
    )
    print(
        f"examples: {manifest['examples']['total']}, skipped {manifest['skipped']['count']}, "
        f"captions cut to {args.text_budget} tokens {manifest['truncated_captions']}; {seconds:.1f} s"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="tokenise image-caption pairs once into token shards for training",
        description="Encode every image with the image tokenizer and every caption with the text "
        "tokenizer, and write fixed-length token rows (one per task and caption language) to "
        "OUT/shard-*.bin with OUT/manifest.json (counts, dtype, layouts, tokenizer fingerprints). "
        "Bad images are skipped and counted. A killed run continues with --resume.",
    )
    p.add_argument(
        "--dataset", required=True, help="'shapes', 'digits' or a folder of images with captions.jsonl/.tsv"
    )
    p.add_argument(
        "--split", default="train", help="split: train or test; a folder also takes 'all' (default: train)"
    )
    p.add_argument(
        "--out", required=True, help="output folder (new or empty, or an interrupted one with --resume)"
    )
    p.add_argument(
        "--tasks",
        default="text_to_image",
        help="comma-separated layouts per caption: text_to_image, image_to_text, super_resolution "
        "(one window of the image at 1x and 2x size) (default: text_to_image)",
    )
    p.add_argument(
        "--sr-window",
        type=int,
        default=8,
        help="super_resolution: low-res codes per window side; the 2x window is twice that (default: 8)",
    )
    p.add_argument("--languages", default="zh,en", help="caption languages to use (default: zh,en)")
    p.add_argument(
        "--image-tokenizer",
        default=None,
        help="image tokenizer folder (default: the one shipped with cogview)",
    )
    p.add_argument(
        "--text-tokenizer", default=None, help="text tokenizer folder (default: the one shipped with cogview)"
    )
    p.add_argument(
        "--max-examples", type=int, default=None, help="use only the first N examples of the split"
    )
    p.add_argument(
        "--text-budget",
        type=int,
        default=32,
        help="text tokens per row; longer captions are cut (default: 32)",
    )
    p.add_argument(
        "--batch-size", type=int, default=256, help="images per image-tokenizer call (default: 256)"
    )
    p.add_argument(
        "--examples-per-shard",
        type=int,
        default=1024,
        help="examples per shard file, also the resume granularity (default: 1024)",
    )
    p.add_argument("--device", default="cpu", help="device for the image tokenizer, e.g. cuda (default: cpu)")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in OUT with the same settings"
    )
    p.add_argument(
        "--allow-outside",
        action="store_true",
        help="a folder dataset may read images outside its folder (paths with .., absolute paths, symlinks "
        "out); without it they are skipped and counted",
    )
    p.add_argument(
        "--dataset-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a keyword argument for the dataset's loader, value parsed as JSON; repeatable "
        "(e.g. all_templates=true: each emoji once per caption template)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)
