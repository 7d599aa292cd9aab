"""Command-line interface: ``cogview SUBCOMMAND ...`` (also ``python -m cogview``).

Each subcommand maps flags to a config or a few arguments and makes one library call; all
logging is configured here, never in the library.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("cogview")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )


def _read_config_file(path: str | None) -> dict:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ValueError("YAML configs need PyYAML: pip install pyyaml (or use a .json config)") from e
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold a mapping of config keys to values")
    return data


def _parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs; values are parsed as JSON when possible (numbers, lists, booleans)."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from cogview.training.vqvae import TokenizerTrainConfig, train_tokenizer

    raw = _read_config_file(args.config)
    raw.update(_parse_overrides(args.set or []))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cogview",
        description="CogView in modern PyTorch: image and text tokenizers, transformer, training and generation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    _configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except ValueError as e:  # bad user input: a clear message, no traceback
        print(f"cogview {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
