"""cogview: CogView text-to-image, captioning, reranking and super-resolution in modern PyTorch.

Public API: :class:`CogViewPipeline` (text-to-image), :class:`ImageTokenizer` (VQ-VAE), :class:`TextTokenizer` (SentencePiece),
:class:`Vocabulary`, :class:`CogViewTransformer` / :class:`TransformerConfig`, and the bundled
data sets in :mod:`cogview.datasets`. Importing has no side effects and loads no data sets
(:mod:`cogview.datasets` is imported on first use).
"""

import importlib
from typing import Any

from cogview.model import PRESETS, CogViewTransformer, TransformerConfig
from cogview.pipeline import CogViewPipeline
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vocab import Vocabulary

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CogViewPipeline",
    "CogViewTransformer",
    "ImageTokenizer",
    "TextTokenizer",
    "TransformerConfig",
    "Vocabulary",
    "datasets",
]


def __getattr__(name: str) -> Any:
    if name == "datasets":
        return importlib.import_module("cogview.datasets")
    raise AttributeError(f"module 'cogview' has no attribute {name!r}")
