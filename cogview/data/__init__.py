"""Training data: task layouts over unified ids, on-disk token shards and the offline prepare job.

`sequences` builds each task's token layout (SPEC 2.4) and recomputes positions/masks from stored
rows; `shards` writes and memory-maps token rows with a manifest that pins the tokenizers;
`prepare` turns an image-caption dataset into shards once, resumably. Inference needs only the
layouts, so `shards` and `prepare` (which loads every dataset) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from cogview.data.sequences import (
    TokenSequence,
    drop_caption,
    image_to_text,
    pad,
    positions_and_mask,
    super_resolution,
    super_resolution_window,
    text_to_image,
    text_token_mask,
)
from cogview.tokenizers.vocab import default_vocab

# Name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "ShardWriter": "cogview.data.shards",
    "TokenShards": "cogview.data.shards",
    "token_dtype": "cogview.data.shards",
    "prepare": "cogview.data.prepare",
    "sequence_length": "cogview.data.prepare",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'cogview.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    # Importing cogview.data.prepare binds the submodule to this package's `prepare`; the
    # function is what this name has always meant here.
    globals()[name] = value
    return value


__all__ = [
    "ShardWriter",
    "TokenSequence",
    "TokenShards",
    "default_vocab",
    "drop_caption",
    "image_to_text",
    "pad",
    "positions_and_mask",
    "prepare",
    "sequence_length",
    "super_resolution",
    "super_resolution_window",
    "text_to_image",
    "text_token_mask",
    "token_dtype",
]
