"""``cogview roundtrip`` and ``cogview train-tokenizer``: the image tokenizer's commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cogview.cli.common import parse_overrides
from cogview.config_io import read_config_file


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from cogview.training.vqvae import TokenizerTrainConfig, train_tokenizer

    raw = read_config_file(args.config)
    raw.update(parse_overrides(args.set or []))
    if args.datasets:
        raw["datasets"] = args.datasets.split(",")
    cfg = TokenizerTrainConfig.from_dict(raw)
    result = train_tokenizer(cfg, args.out, resume=args.resume, max_steps=args.max_steps)
    print(json.dumps(result, indent=2))
    return 0


def cmd_roundtrip(args: argparse.Namespace) -> int:
    from cogview.evaluation.tokenizer import roundtrip_report
    from cogview.tokenizers.image import ImageTokenizer

    tokenizer = ImageTokenizer.from_pretrained(args.tokenizer)
    report = roundtrip_report(
        tokenizer,
        args.datasets.split(","),
        args.split,
        args.num,
        Path(args.out),
        checkers=not args.no_checkers,
    )
    for name, row in report["datasets"].items():
        extra = "".join(f"  {k} {v:.1%}" for k, v in row.items() if k.startswith("checker"))
        print(
            f"{name:>8}: {row['n']} {args.split} images  PSNR {row['psnr']:.2f} dB  codes used {row['usage']:.1%}{extra}"
        )
    print(f"grid: {report['grid']}")
    print(f"metrics: {report['metrics']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "roundtrip",
        help="encode and decode bundled test images with the image tokenizer; write a PNG grid and metrics",
        description="Tokenizer round trip: images -> VQ-VAE codes -> images. Writes a grid of "
        "originals | reconstructions per dataset and prints PSNR, codebook use and the checkers' pass rate.",
    )
    p.add_argument(
        "--tokenizer", default=None, help="image tokenizer folder (default: the one shipped with cogview)"
    )
    p.add_argument(
        "--datasets",
        default="shapes,digits",
        help="comma-separated bundled datasets or folders (default: shapes,digits)",
    )
    p.add_argument("--split", default="test", help="split to use (default: test)")
    p.add_argument("-n", "--num", type=int, default=200, help="images per dataset (default: 200)")
    p.add_argument("--out", default="out/roundtrip", help="output folder (default: out/roundtrip)")
    p.add_argument("--no-checkers", action="store_true", help="skip the shapes detector / digit classifier")
    p.set_defaults(func=cmd_roundtrip)

    p = sub.add_parser(
        "train-tokenizer",
        help="train the VQ-VAE image tokenizer on bundled or your own data",
        description="Train a VQ-VAE image tokenizer. Writes OUT/checkpoints/ (atomic, resumable), "
        "OUT/metrics.jsonl, OUT/model/ (config.json + model.safetensors), reconstruction PNGs and OUT/eval.json.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="JSON or YAML file with TokenizerTrainConfig keys")
    p.add_argument("--datasets", help="comma-separated dataset names or folders (overrides the config)")
    p.add_argument(
        "--set",
        nargs="*",
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set steps=500 batch_size=32",
    )
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT")
    p.add_argument(
        "--max-steps", type=int, help="stop after this step (the schedule still targets the config's steps)"
    )
    p.set_defaults(func=cmd_train_tokenizer)
