"""Config files and the frozen config dataclasses built from them: one strict loader for both.

:func:`read_config_file` reads a JSON or YAML file of settings (training, tokenizer training,
architectures, DeepSpeed); :func:`from_dict_strict` builds a config dataclass from such a dict.
Every config (VQ-VAE, transformer, sampling, training) refuses unknown keys with the list of
valid ones, so a typo in a config file is an error that says what to fix, not a silently
ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def read_config_file(path: str | os.PathLike | None) -> dict[str, Any]:
    """The mapping a JSON or YAML (``.yaml``/``.yml``) file holds; ``{}`` for no path.

    A missing, unparsable or non-mapping file is a ValueError naming the file.
    """
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


def from_dict_strict(
    cls: type[T],
    data: Mapping[str, Any],
    what: str | None = None,
    hint: str = "",
    noun: str = "keys",
    error: type[ValueError] = ValueError,
) -> T:
    """``cls(**data)`` after checking that every key names a field of the dataclass ``cls``
    (else ``error``, a ValueError subclass such as the training config's ConfigError)."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(
            f"unknown {what or cls.__name__} {noun} {unknown}; "
            f"valid {noun.replace('(s)', 's')} are {sorted(known)}{hint}"
        )
    return cls(**data)
