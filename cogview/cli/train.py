"""``cogview train``: train the CogView transformer on token shards from a config file."""

from __future__ import annotations

import argparse
import json
import sys

from cogview.cli.common import parse_overrides, read_config_file


def cmd_train(args: argparse.Namespace) -> int:
    from cogview.training.config import TrainConfig, apply_overrides
    from cogview.training.loop import TrainingDiverged, train

    raw = apply_overrides(read_config_file(args.config), parse_overrides(args.set or []))
    cfg = TrainConfig.from_dict(raw)
    try:
        result = train(cfg, args.out, resume=args.resume, max_steps=args.max_steps)
    except TrainingDiverged as e:
        print(f"cogview train: {e}", file=sys.stderr)
        return 3
    print(json.dumps(result, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the CogView transformer on token shards (from cogview prepare)",
        description="Train the transformer with AdamW, warmup + cosine lr, gradient clipping and "
        "accumulation, optional autocast, a NaN/inf guard and atomic checkpoints with exact resume. "
        "Writes OUT/metrics.jsonl, OUT/loss.png, OUT/checkpoints/step_N/ and, when done, OUT/model/ "
        "(config.json + model.safetensors + cogview.json). See docs/training.md.",
        epilog="example: cogview train --config configs/tiny.json --out out/tiny "
        "--set data=out/shards/shapes-tiny steps=500",
    )
    p.add_argument(
        "--config", help="JSON or YAML file of TrainConfig keys (configs/tiny.json, configs/small.json)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--set",
        nargs="*",
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set lr=1e-3 model.dropout=0.0 data=out/shards",
    )
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT")
    p.add_argument(
        "--max-steps",
        type=int,
        help="stop after this step with a checkpoint (the schedule still targets the config's steps)",
    )
    p.set_defaults(func=cmd_train)
