"""Helpers shared by the subcommand modules: ``--set key=value`` overrides, output folders and
the sampling flags."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling flags a subcommand has (``--temperature``, ``--top-k``, ...) as per-field
    overrides of the model's defaults; a flag left out is None, which keeps the default."""
    from cogview.generation.sampling import SAMPLING_FIELDS  # torch: only once a command runs

    return {name: getattr(args, name) for name in SAMPLING_FIELDS if hasattr(args, name)}


def output_folder(path: str | os.PathLike) -> Path:
    """``--out``, created now: an existing file there is refused before any work, not after it."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; give a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output folder {out}: {e.strerror or e}") from None
    return out


def parse_overrides(pairs: list[str], flag: str = "--set") -> dict:
    """``key=value`` pairs; values are parsed as JSON when possible (numbers, lists, booleans)."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"{flag} expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
