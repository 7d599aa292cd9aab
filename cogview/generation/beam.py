"""Beam search over the decoding engine's cache: the most likely texts, not one sampled text.

Greedy captioning commits to its first choice at every step, and a caption's template comes
first: the shipped emoji captioner often spends its likelihood on ``表情符号：`` and then names
the wrong emoji, or none. A beam keeps the ``width`` best partial texts per prompt by summed
log-probability, under the same restricted distribution the sampler draws from (only the allowed
ids, renormalised), so its best text is at least as likely as the greedy one, and the other
finished beams are candidates for re-ranking (:func:`~cogview.generation.reranking.best_captions`).

Each step feeds one token per beam through :class:`~cogview.generation.step.DecodeStep` and keeps
each surviving beam's cache row (``KVCache.select``); a prompt whose search is over leaves the
cache, so a batch's later steps cost only its open prompts. The bookkeeping of which beams
survive is on the host, once per step: beams serve short texts (captions), not 64-code images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cogview.checks import positive_int
from cogview.generation.decode import PromptState
from cogview.generation.step import DecodeStep
from cogview.model import CogViewTransformer

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Hypothesis:
    """One finished beam: its ids (without the stop id) and their summed log-probability."""

    ids: tuple[int, ...]
    score: float


def _log_probs(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``[R, V]`` log-probabilities over the allowed ids only (-inf elsewhere)."""
    return logits.float().masked_fill(~allowed, NEG_INF).log_softmax(-1)


@torch.inference_mode()
def beam_search(
    model: CogViewTransformer,
    state: PromptState,
    width: int,
    steps: int,
    allowed: torch.Tensor,
    stop_id: int,
    *,
    first_allowed: torch.Tensor | None = None,
    step: DecodeStep | None = None,
) -> list[list[Hypothesis]]:
    """The ``width`` most likely texts of each prompt in ``state`` (prefilled, all of one length),
    best first, each ending at ``stop_id`` or after ``steps`` tokens.

    Args:
        allowed: ``[V]`` bool mask of the ids a step may choose (``stop_id`` among them).
        first_allowed: the mask of the first step (e.g. without ``stop_id``: a text has a token).

    The search stops for a prompt once ``width`` texts have finished and no open beam can beat
    the worst of them (log-probabilities only fall as a text grows, so the result is the one an
    unbounded search of this width would return).
    """
    width = positive_int("width", width)
    P = state.num_prompts
    if not 1 <= steps <= state.max_new_tokens:
        raise ValueError(f"need 1..{state.max_new_tokens} steps, got {steps}")
    if bool((state.lengths != state.lengths[0]).any()):
        raise ValueError("beam search needs prompts of one length (captions of images share theirs)")
    V = state.last_logits.shape[-1]
    device = state.last_logits.device
    for name, mask in (("allowed", allowed), ("first_allowed", first_allowed)):
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (V,)):
            raise ValueError(f"{name} must be a [{V}] bool mask")
    if not bool(allowed[stop_id]):
        raise ValueError("the stop id must be allowed, or no text could end")
    allowed = allowed.to(device)
    first = allowed if first_allowed is None else first_allowed.to(device)
    step = step or DecodeStep(model)
    cache = state.cache.expand(width)  # rows [p0 x width, p1 x width, ...]
    logits = state.last_logits.repeat_interleave(width, dim=0)  # [P*W, V]
    # Only the first beam of each prompt is open at the start: the others would repeat it.
    scores = torch.full((P, width), NEG_INF, device=device)
    scores[:, 0] = 0.0
    texts: list[list[tuple[int, ...]]] = [[()] * width for _ in range(P)]
    finished: list[list[Hypothesis]] = [[] for _ in range(P)]
    done = [False] * P
    active = list(range(P))  # the prompts whose beams the cache holds, in its row order
    base = int(state.lengths[0])
    for i in range(steps):
        A = len(active)
        logp = _log_probs(logits, first if i == 0 else allowed).view(A, width, V)
        total = (scores[..., None] + logp).view(A, width * V)  # [A, W*V]
        best, index = total.topk(min(2 * width, width * V), dim=-1)  # enough to refill after stops
        parents = torch.zeros(A, width, dtype=torch.long)
        tokens = torch.full((A, width), stop_id, dtype=torch.long)
        new_scores = torch.full((A, width), NEG_INF)
        for a, (vals, idx) in enumerate(zip(best.tolist(), index.tolist(), strict=True)):
            p = active[a]
            kept = 0
            for value, flat in zip(vals, idx, strict=True):
                if value == NEG_INF or kept == width:
                    break
                beam, token = divmod(flat, V)
                if token == stop_id or i == steps - 1:
                    text = texts[p][beam] if token == stop_id else (*texts[p][beam], token)
                    finished[p].append(Hypothesis(text, value))
                    continue
                parents[a, kept], tokens[a, kept], new_scores[a, kept] = beam, token, value
                kept += 1
            finished[p] = sorted(finished[p], key=lambda h: -h.score)[:width]
            worst = finished[p][-1].score if len(finished[p]) == width else NEG_INF
            if kept == 0 or float(new_scores[a, 0]) <= worst:
                done[p] = True
            texts[p] = [(*texts[p][int(b)], int(t)) for b, t in zip(parents[a], tokens[a], strict=True)]
        if all(done) or i == steps - 1:
            break
        # A finished prompt's rows leave the cache: the next steps feed only the open prompts' beams.
        keep = [a for a, p in enumerate(active) if not done[p]]
        rows = (parents[keep] + torch.tensor(keep)[:, None] * width).flatten()  # [A'*W] parent rows
        cache = cache.select(rows.to(device))
        scores = new_scores[keep].to(device)
        active = [active[a] for a in keep]
        slots = torch.tensor([base + i], device=device)
        fed = tokens[keep].flatten().to(device)[:, None]  # [A'*W, 1]
        logits = step(cache, fed, slots, state.inputs, kv_len=base + i + 1)[:, -1]
    return finished
