"""Strict construction of the frozen config dataclasses from plain dicts (JSON / YAML / config.json).

Every config (VQ-VAE, transformer, sampling, training) refuses unknown keys with the list of
valid ones, so a typo in a config file is an error that says what to fix, not a silently
ignored setting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def from_dict_strict(
    cls: type[T], data: Mapping[str, Any], what: str | None = None, hint: str = "", noun: str = "keys"
) -> T:
    """``cls(**data)`` after checking that every key names a field of the dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown {what or cls.__name__} {noun} {unknown}; "
            f"valid {noun.replace('(s)', 's')} are {sorted(known)}{hint}"
        )
    return cls(**data)
