"""Post-selection (CogView's self-reranking, SPEC 3.5): keep the candidates that best explain the prompt.

The caption model scores ``log p(prompt | image)`` for every candidate in one batched pass; no
CLIP model is involved, so it works in any language the caption model was trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from cogview.generation.captioning import Captioner
from cogview.generation.text_to_image import PromptResult


def candidate_scores(
    results: Sequence[PromptResult], captioner: Captioner, max_batch_size: int
) -> list[torch.Tensor]:
    """``log p(prompt | image)`` of every image of each result, in one scoring pass over them all.

    The results must share one prompt (a server batch groups its requests by prompt, so that
    every scored row has the same length as when scored alone).
    """
    if len({r.prompt for r in results}) != 1:
        raise ValueError("results scored together must share one prompt")
    codes = torch.cat([captioner.candidate_codes(r.images, r.codes) for r in results])  # the original re-encodes saved images
    scores, _ = captioner.log_likelihoods(codes, [results[0].prompt] * len(codes), max_batch_size=max_batch_size)
    return list(scores.split([len(r.images) for r in results]))


def rerank(
    result: PromptResult,
    captioner: Captioner,
    candidates: int,
    max_batch_size: int,
    scores: torch.Tensor | None = None,
) -> PromptResult:
    """Keep, of each group of ``candidates`` consecutive images, the one that best explains the prompt.

    Candidate c of requested image i is image ``i * candidates + c`` of ``result`` (its own seed,
    :func:`~cogview.generation.batching.image_seed`), so candidate 0 is the image a call without
    reranking returns. The kept image's scores of all candidates are recorded. ``scores``: those of
    :func:`candidate_scores`, when computed together with other results.
    """
    if scores is None:
        scores = candidate_scores([result], captioner, max_batch_size)[0]
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
