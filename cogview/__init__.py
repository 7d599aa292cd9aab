"""cogview: CogView text-to-image, captioning, reranking and super-resolution in modern PyTorch.

Public API: :class:`CogViewPipeline` (text-to-image), :class:`ImageTokenizer` (VQ-VAE), :class:`TextTokenizer` (SentencePiece),
:class:`Vocabulary`, :class:`CogViewTransformer` / :class:`TransformerConfig`, and the bundled
data sets in :mod:`cogview.datasets`. Importing loads no data sets (:mod:`cogview.datasets` is
imported on first use); its one side effect is OpenMP's spin count, below.
"""

import os

# GNU OpenMP reads how long a thread spins at a barrier once, when torch loads it. Its default
# (300,000 spins, then sleep) makes a decode step's many small parallel regions spin away the time
# slices of any program sharing a core: generation ran 3.6-5x slower beside a busy loop or a
# one-thread torch job. 10,000 spins cost nothing on an idle CPU and halve that loss
# (benchmarks/thread_contention.py). A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins; it only
# takes effect when cogview is imported before torch (as the CLI does).
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import importlib  # noqa: E402
from typing import Any

from cogview.model import PRESETS, CogViewTransformer, TransformerConfig  # noqa: E402
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
