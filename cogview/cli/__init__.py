"""Command-line interface: ``cogview SUBCOMMAND ...`` (also ``python -m cogview``).

Each subcommand lives in a small module with a ``register(subparsers)`` function; it maps flags
to a config or a few arguments and makes one library call. Logging is configured here only.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cogview.cli import convert, data, edit, evaluate, generate, jobs, serve, tokenizer, train
from cogview.serialization import DiskFullError

COMMAND_MODULES = (tokenizer, data, train, generate, jobs, edit, evaluate, convert, serve)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cogview",
        description="CogView in modern PyTorch: image and text tokenizers, transformer, training and generation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
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
    except DiskFullError as e:
        print(f"cogview {args.command}: error: {e.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
