"""Training data: task layouts over unified ids, on-disk token shards and the offline prepare job.

`sequences` builds each task's token layout (SPEC 2.4) and recomputes positions/masks from stored
rows; `shards` writes and memory-maps token rows with a manifest that pins the tokenizers;
`prepare` turns an image-caption dataset into shards once, resumably.
"""

from __future__ import annotations

from cogview.data.prepare import default_vocab, prepare, sequence_length
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
from cogview.data.shards import ShardWriter, TokenShards, token_dtype

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
