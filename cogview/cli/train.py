"""``cogview train`` (transformer training, one process or under torchrun), ``cogview consolidate``
and ``cogview average``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from cogview.cli.common import parse_overrides
from cogview.config_io import read_config_file
from cogview.training.config import STRATEGIES


def cmd_train(args: argparse.Namespace) -> int:
    from cogview.training.config import TrainConfig, apply_overrides
    from cogview.training.distributed import RankZeroFilter, launched_rank
    from cogview.training.loop import TrainingDiverged, train

    raw = apply_overrides(read_config_file(args.config), parse_overrides(args.set or []))
    if args.strategy:
        raw["strategy"] = args.strategy
    cfg = TrainConfig.from_dict(raw)
    rank = launched_rank()
    for handler in logging.getLogger().handlers:  # one log for a torchrun job: rank 0's
        if not any(isinstance(f, RankZeroFilter) for f in handler.filters):
            handler.addFilter(RankZeroFilter(rank))
    try:
        result = train(cfg, args.out, resume=args.resume, max_steps=args.max_steps)
    except TrainingDiverged as e:
        if rank == 0:
            print(f"cogview train: {e}", file=sys.stderr)
        return 3
    if rank == 0:
        print(json.dumps(result, indent=2))
    return 0


def cmd_consolidate(args: argparse.Namespace) -> int:
    from cogview.training.sharded_checkpoint import consolidate

    print(consolidate(args.checkpoint, args.out))
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from cogview.training.averaging import average_models

    print(average_models(args.models, args.out, args.weights))
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
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="data parallelism (overrides the config's strategy): ddp, fsdp or deepspeed under torchrun, "
        "e.g. torchrun --nproc_per_node 8 -m cogview train ... --strategy fsdp (docs/scaling.md)",
    )
    p.set_defaults(func=cmd_train)

    c = sub.add_parser(
        "consolidate",
        help="turn a training checkpoint (sharded or not) into a model folder for inference",
        description="Gather the weights of OUT/checkpoints/step_N (written at any world size by any strategy) "
        "into MODEL_DIR: config.json + model.safetensors + cogview.json, loadable with "
        "CogViewTransformer.from_pretrained and CogViewPipeline.from_components. See docs/scaling.md.",
        epilog="example: cogview consolidate runs/4b/checkpoints/step_00010000 --out runs/4b/model-10k",
    )
    c.add_argument("checkpoint", help="a checkpoint folder, OUT/checkpoints/step_N")
    c.add_argument("--out", required=True, help="the model folder to write")
    c.set_defaults(func=cmd_consolidate)

    a = sub.add_parser(
        "average",
        help="average the weights of model folders of one architecture (a model soup)",
        description="Write the weighted mean of two or more model folders (config.json + model.safetensors "
        "[+ cogview.json]) into OUT. Fine-tunes of one ancestor trained towards different data often keep "
        "what each learned when averaged; the shipped emoji transformer is the mean of two stages "
        "(docs/emoji_model.md). The configs, vocabularies and tokenizers must match exactly.",
        epilog="example: cogview average runs/emoji/t2i-more2/model runs/emoji/t2i-more3/model "
        "--weights 0.5 0.5 --out runs/emoji/t2i-soup/model",
    )
    a.add_argument("models", nargs="+", help="two or more model folders")
    a.add_argument("--out", required=True, help="the model folder to write (not one of the inputs)")
    a.add_argument(
        "--weights", nargs="+", type=float, help="one weight per folder, normalised to sum 1 (default: equal)"
    )
    a.set_defaults(func=cmd_average)
