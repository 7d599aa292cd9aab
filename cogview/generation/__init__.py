"""Generation: pure sampling functions, the prefill + decode loop over a KV cache, and jobs.

:mod:`~cogview.generation.sampling` holds the logits processors, :mod:`~cogview.generation.decode`
the autoregressive loop, :mod:`~cogview.generation.text_to_image` the text-to-image job that
:class:`cogview.pipeline.CogViewPipeline` exposes as ``generate``.
"""

from cogview.generation.decode import Hooks, PromptState, Rows, decode, prefill, sample_tokens
from cogview.generation.sampling import (
    SamplingConfig,
    apply_temperature,
    cfg_combine,
    process_logits,
    resolve_sampling,
    sample_from_uniform,
    top_k_filter,
    top_p_filter,
)
from cogview.generation.text_to_image import PromptResult, TextToImage

__all__ = [
    "Hooks",
    "PromptResult",
    "PromptState",
    "Rows",
    "SamplingConfig",
    "TextToImage",
    "apply_temperature",
    "cfg_combine",
    "decode",
    "prefill",
    "process_logits",
    "resolve_sampling",
    "sample_from_uniform",
    "sample_tokens",
    "top_k_filter",
    "top_p_filter",
]
