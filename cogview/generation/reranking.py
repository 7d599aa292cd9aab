"""Post-selection (CogView's self-reranking, SPEC 3.5): keep the candidates that best explain the prompt.

The caption model scores ``log p(prompt | image)`` for every candidate in one batched pass; no
CLIP model is involved, so it works in any language the caption model was trained on.
"""

from __future__ import annotations

import dataclasses

import torch

from cogview.generation.captioning import Captioner
from cogview.generation.text_to_image import PromptResult


def rerank(result: PromptResult, captioner: Captioner, candidates: int, max_batch_size: int) -> PromptResult:
    """Keep, of each group of ``candidates`` consecutive images, the one that best explains the prompt.

    Candidate c of requested image i is image ``i * candidates + c`` of ``result`` (its own seed,
    :func:`~cogview.generation.batching.image_seed`), so candidate 0 is the image a call without
    reranking returns. The kept image's scores of all candidates are recorded.
    """
    codes = captioner.candidate_codes(result.images, result.codes)  # the original re-encodes saved images
    scores, _ = captioner.log_likelihoods(codes, [result.prompt] * len(result.images), max_batch_size=max_batch_size)
    groups = scores.view(-1, candidates)  # [n, candidates]
    best = groups.argmax(dim=1) + torch.arange(groups.shape[0]) * candidates  # [n]
    keep = best.tolist()
    return dataclasses.replace(
        result,
        image_seeds=[result.image_seeds[k] for k in keep],
        codes=result.codes[best],
        images=[result.images[k] for k in keep],
        rerank={"candidates": candidates, "scores": groups.tolist(), "kept": (best % candidates).tolist()},
    )
