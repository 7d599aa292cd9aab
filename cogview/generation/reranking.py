"""Post-selection (CogView's self-reranking, SPEC 3.5): keep the candidates that best explain the prompt.

The caption model scores ``log p(prompt | image)`` for every candidate in one batched pass; no
CLIP model is involved, so it works in any language the caption model was trained on. Run
backwards, the text-to-image model's ``log p(codes | caption)`` chooses among caption candidates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from cogview.generation.captioning import DEFAULT_MAX_BATCH_SIZE, Captioner, Images
from cogview.generation.editing.editor import code_log_likelihoods
from cogview.generation.sampling import SAMPLING_FIELDS
from cogview.generation.text_to_image import PromptResult, TextToImage

# How post-selection scores a candidate image. "caption": CogView's CapS, log p(prompt | image)
# under the caption model. "joint": CapS plus the generator's own log p(codes | prompt), the two
# directions of one pair. On the shipped emoji model, best of 4 (200 images per cell, zh / en)
# kept aligned shapes 90 / 86.5% -> 92 / 93.5% and train emoji 91 / 96.5% -> 92 / 96.5%
# (docs/default_model.md): the captioner alone often preferred a square for "a blue circle".
SELECTION_SCORES = ("caption", "joint")


def check_selection(selection: Any) -> str:
    if selection not in SELECTION_SCORES:
        raise ValueError(f"post-selection score must be one of {list(SELECTION_SCORES)}, got {selection!r}")
    return selection


def code_scores(t2i: TextToImage, prompt: str, codes: torch.Tensor, max_batch_size: int) -> torch.Tensor:
    """``[n]`` summed ``log p(codes | prompt)`` of the text-to-image transformer for ``codes [n, h, w]``,
    teacher-forced without guidance, in chunks of ``max_batch_size``."""
    tokens = t2i.prompt_tokens(prompt)[0][None]
    flat = codes.reshape(codes.shape[0], -1).long()
    with torch.inference_mode():
        return torch.cat(
            [
                code_log_likelihoods(
                    t2i.transformer, tokens, flat[i : i + max_batch_size], t2i.vocab.image_range
                ).sum(-1)
                for i in range(0, flat.shape[0], max_batch_size)
            ]
        )


def candidate_scores(
    results: Sequence[PromptResult],
    captioner: Captioner,
    max_batch_size: int,
    t2i: TextToImage | None = None,
) -> list[torch.Tensor]:
    """The post-selection score of every image of each result: ``log p(prompt | image)``, in one
    scoring pass over them all, plus, with ``t2i`` (the "joint" score), each result's
    :func:`code_scores` (result by result, so a result's scores do not depend on its company).

    The results must share one prompt (a server batch groups its requests by prompt, so that
    every scored row has the same length as when scored alone).
    """
    if len({r.prompt for r in results}) != 1:
        raise ValueError("results scored together must share one prompt")
    codes = torch.cat(
        [captioner.candidate_codes(r.images, r.codes) for r in results]
    )  # the original re-encodes saved images
    scores, _ = captioner.log_likelihoods(
        codes, [results[0].prompt] * len(codes), max_batch_size=max_batch_size
    )
    out = list(scores.split([len(r.images) for r in results]))
    if t2i is not None:
        out = [
            s + code_scores(t2i, r.prompt, r.codes, max_batch_size) for s, r in zip(out, results, strict=True)
        ]
    return out


def rerank(
    result: PromptResult,
    captioner: Captioner,
    candidates: int,
    max_batch_size: int,
    scores: torch.Tensor | None = None,
    t2i: TextToImage | None = None,
) -> PromptResult:
    """Keep, of each group of ``candidates`` consecutive images, the one that best explains the prompt.

    Candidate c of requested image i is image ``i * candidates + c`` of ``result`` (its own seed,
    :func:`~cogview.generation.batching.image_seed`), so candidate 0 is the image a call without
    reranking returns. The kept image's scores of all candidates are recorded. ``scores``: those of
    :func:`candidate_scores`, when computed together with other results; ``t2i``: score "joint"
    (recorded as ``rerank["score"]``).
    """
    if scores is None:
        scores = candidate_scores([result], captioner, max_batch_size, t2i)[0]
    groups = scores.view(-1, candidates)  # [n, candidates]
    best = groups.argmax(dim=1) + torch.arange(groups.shape[0]) * candidates  # [n]
    keep = best.tolist()
    return dataclasses.replace(
        result,
        image_seeds=[result.image_seeds[k] for k in keep],
        codes=result.codes[best],
        images=[result.images[k] for k in keep],
        rerank={
            "candidates": candidates,
            "score": "caption" if t2i is None else "joint",
            "scores": groups.tolist(),
            "kept": (best % candidates).tolist(),
        },
    )


# Candidates for caption re-ranking: the greedy caption and samples among the 8 likeliest pieces
# (top-k 8 at temperature 1 held the right emoji name among 9 candidates for 76% / 93.5% of train
# emoji, zh / en, against 68% / 88% greedy; docs/default_model.md).
CAPTION_CANDIDATE_SAMPLING = {"top_k": 8, "temperature": 1.0}
# Beam candidates re-ranked: those at most e^3 (about 20) times less likely under the captioner
# than its best caption. All 8 of a beam let the text-to-image score pick a wrong digit for held-out
# digits (captions right 88.5 / 88.5% greedy -> 81 / 84.5%); within e^3: 87.5 / 89.5%, while Chinese
# shapes captions stay at 80% (greedy 29%) and train emoji at 74 / 90.5% (greedy 68 / 88%), 200
# images per cell (docs/default_model.md).
CAPTION_CANDIDATE_LOG_RATIO = 3.0
# Keyword arguments that set sampling (the rest apply to every candidate): given one, caption
# candidates are sampled, not searched.
CAPTION_SAMPLING_KEYS = ("sampling", *SAMPLING_FIELDS)


def caption_scores(
    captioner: Captioner, t2i: TextToImage, codes: torch.Tensor, texts: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(text | image), log p(codes | text))``, each ``[C]``, for one image's ``codes [h, w]``.

    The first is the captioner's score (CapS); the second the text-to-image transformer's, post-
    selection run backwards: for one image it ranks texts as their mutual information with it does.
    """
    C = len(texts)
    text_scores, _ = captioner.log_likelihoods(codes[None].expand(C, -1, -1), texts)
    # one row per text: prompts differ in length
    image_scores = torch.cat([code_scores(t2i, t, codes[None], 1) for t in texts])
    return text_scores, image_scores


def best_captions(
    captioner: Captioner,
    t2i: TextToImage,
    images: Images,
    language: str,
    candidates: int,
    *,
    seed: int | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    **overrides: Any,
) -> list[str]:
    """One caption per image: of ``candidates`` captions, the one with the highest
    ``log p(text | image) + log p(codes | text)`` (:func:`caption_scores`).

    The candidates are the most likely captions, from a beam search of width ``candidates``, that
    are at most ``exp(CAPTION_CANDIDATE_LOG_RATIO)`` times less likely than the best one
    (deterministic; ``seed`` unused): a confident captioner keeps its caption. With sampling
    ``overrides`` (:data:`CAPTION_SAMPLING_KEYS`) they are the greedy caption and
    ``candidates - 1`` sampled ones instead, drawn with those settings over
    :data:`CAPTION_CANDIDATE_SAMPLING` and seeded by ``seed`` (None: 0, so that the same image
    gets the same caption). The other overrides (``max_tokens``, ``dtype``, ...) apply to every
    candidate.
    """
    common = {key: v for key, v in overrides.items() if key not in CAPTION_SAMPLING_KEYS}
    given = {key: v for key, v in overrides.items() if key in CAPTION_SAMPLING_KEYS and v is not None}
    codes = captioner.codes(images)  # [n, h, w]
    if given:  # Captioner.caption judges them (e.g. refuses guidance)
        drawn = _sampled_candidates(
            captioner, images, language, candidates, seed, max_batch_size, given, common
        )
    else:
        found = captioner.beam_captions(
            images, language, candidates, max_batch_size=max_batch_size, codes=codes, **common
        )
        drawn = [likely_captions(texts) for texts in found]
    out = []
    for i in range(codes.shape[0]):
        texts = list(dict.fromkeys(t for t in drawn[i] if t.strip()))  # distinct and scorable, in order
        if len(texts) < 2:
            out.append(texts[0] if texts else drawn[i][0])
            continue
        text_scores, image_scores = caption_scores(captioner, t2i, codes[i], texts)
        out.append(texts[int((text_scores + image_scores).argmax())])
    return out


def likely_captions(found: Sequence[tuple[str, float]]) -> list[str]:
    """Of one image's beam captions (best first), those worth re-ranking: within
    :data:`CAPTION_CANDIDATE_LOG_RATIO` of the best log-probability."""
    return [text for text, score in found if score >= found[0][1] - CAPTION_CANDIDATE_LOG_RATIO]


def _sampled_candidates(
    captioner: Captioner,
    images: Images,
    language: str,
    candidates: int,
    seed: int | None,
    max_batch_size: int,
    given: dict[str, Any],
    common: dict[str, Any],
) -> list[list[str]]:
    """Per image: its greedy caption, then ``candidates - 1`` sampled ones."""
    greedy = captioner.caption(images, language, 1, max_batch_size=max_batch_size, **common)
    k = candidates - 1
    sampled = captioner.caption(
        images,
        language,
        k,
        seed=0 if seed is None else seed,
        max_batch_size=max_batch_size,
        **CAPTION_CANDIDATE_SAMPLING | given,
        **common,
    )
    return [[g, *sampled[i * k : (i + 1) * k]] for i, g in enumerate(greedy)]
