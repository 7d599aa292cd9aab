"""Validation of the values a user hands the library: counts, seeds, numbers and text.

One place for each check, so the API, the CLI and the server refuse the same input with the
same message (a ValueError or TypeError that names the parameter and says what to pass),
before any work starts. Ground floor: imports nothing of ours.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

# A seed is hashed to 64 bits (cogview.generation.batching.image_seed); wider ints are refused.
SEED_RANGE = (-(2**63), 2**64)


def positive_int(
    name: str, value: Any, *, most: int | None = None, hint: str = "", type_error: type[Exception] = TypeError
) -> int:
    """``value`` as an int >= 1 (and <= ``most``); bools, floats and strings are refused.

    A wrong type raises ``type_error``: config dataclasses and file readers pass ValueError, since
    a wrong type in a file is a bad value there and their callers report ValueErrors.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise type_error(f"{name} must be a positive integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    if most is not None and value > most:
        raise ValueError(f"{name}={value} is more than the limit of {most}{hint}")
    return value


def check_seed(seed: Any) -> int | None:
    """An int seed (None: draw one). ``1.5``, ``"1"``, ``True`` or a tensor are refused, not rounded."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or None, got {seed!r} ({type(seed).__name__})")
    seed = int(seed)
    if not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
        raise ValueError(f"seed must lie in [-2**63, 2**64), got {seed}")
    return seed


def finite_float(name: str, value: Any) -> float:
    """``value`` as a finite float; a bool, a string, inf, NaN or an int too large for a float is refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    try:
        out = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large for a float: {value}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {out}")
    return out


def check_text(name: str, text: Any, *, allow_none: bool = False) -> str | None:
    """A str that is valid Unicode (no lone surrogates, which no tokenizer can encode)."""
    if text is None and allow_none:
        return None
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{name} holds a lone surrogate ({text[e.start]!r} at position {e.start}), which is not valid "
            "Unicode text: was it decoded with the right encoding?"
        ) from None
    return text


def check_device(device: Any) -> torch.device:
    """A torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``), or a ValueError saying so."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r} ({e}); use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise ValueError(f"device {device!r} is not available: this machine has {count} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise ValueError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or mps")
    return dev


def prompt_strings(prompts: Any) -> list[str]:
    """One prompt or a sequence of them as a non-empty list of valid Unicode strings."""
    if isinstance(prompts, str):
        prompts = [prompts]
    elif isinstance(prompts, (bytes, bytearray, Mapping)) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompt must be a str or a list of str, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    return [check_text(f"prompt {i + 1}" if len(prompts) > 1 else "prompt", p) for i, p in enumerate(prompts)]


__all__ = ["SEED_RANGE", "check_device", "check_seed", "check_text", "finite_float", "positive_int", "prompt_strings"]
