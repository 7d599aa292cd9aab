"""The autoregressive loop: prefill the prompt once, then one-token decode steps over a KV cache.

CogView computes the prompt once at batch 1 and shares it across the samples (SPEC 3.1, step 4);
here :func:`prefill` writes one cache row per prompt (the text prompt, plus the empty-text prompt
when classifier-free guidance is on) and :func:`sample_tokens` expands it to the batch, then
decodes one token per step, reading only the filled part of a preallocated cache (gpt-fast's
``prefill`` + ``decode_one_token``). Prompts of unequal length share each forward call through
per-row positions and cache slots. Randomness comes as per-row uniforms drawn up front.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from cogview.checks import positive_int
from cogview.generation.sampling import SamplingConfig, cfg_combine, process_logits, sample_from_uniform
from cogview.model import CogViewTransformer, KVCache


@dataclass(frozen=True)
class PromptState:
    """Prompts after :func:`prefill`: one cache row each, and what comes next.

    Attributes:
        cache: K/V of the prompts, one row per prompt; never written after prefill (it is expanded).
        last_logits: ``[P, V]`` float32 logits at each prompt's last token (the first sampled token).
        lengths: ``[P]`` prompt lengths; the next token of row p sits at position/slot ``lengths[p]``.
        max_new_tokens: how many tokens the cache has room for.
    """

    cache: KVCache
    last_logits: torch.Tensor
    lengths: torch.Tensor
    max_new_tokens: int

    @property
    def num_prompts(self) -> int:
        return int(self.lengths.shape[0])


def _prompt_rows(prompts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if not 1 <= len(prompts) <= 2:
        raise ValueError(f"prefill takes one prompt, or two (conditional, unconditional); got {len(prompts)}")
    rows = [torch.as_tensor(p, dtype=torch.long).reshape(-1) for p in prompts]
    if any(r.numel() == 0 for r in rows):
        raise ValueError("a prompt has no tokens; every layout starts with at least one command token")
    return rows


@torch.inference_mode()
def prefill(
    model: CogViewTransformer, prompts: Sequence[torch.Tensor], max_new_tokens: int, pad_id: int = 0
) -> PromptState:
    """Run the prompts (1-D token tensors) once, right-padded into one batch, into a new cache.

    Padding sits after a row's last token, so no real token attends to it, and the slots it fills
    are overwritten by that row's own generated tokens before any query can see them.
    """
    rows = _prompt_rows(prompts)
    positive_int("max_new_tokens", max_new_tokens)
    lengths = [r.numel() for r in rows]
    L = max(lengths)
    max_seq_len = model.config.max_seq_len
    if L + max_new_tokens > max_seq_len:
        raise ValueError(
            f"a prompt of {L} tokens plus {max_new_tokens} new tokens exceeds the model's "
            f"max_seq_len={max_seq_len}; shorten the prompt to at most {max_seq_len - max_new_tokens} tokens"
        )
    device = model.tok_embeddings.weight.device
    tokens = torch.full((len(rows), L), pad_id, dtype=torch.long)  # [P, L]
    for i, r in enumerate(rows):
        tokens[i, : r.numel()] = r
    tokens = tokens.to(device)
    # The last sampled token is never fed back, so the cache needs L + max_new_tokens - 1 slots.
    cache = model.new_cache(len(rows), max_len=L + max_new_tokens - 1, device=device)
    positions = torch.arange(L, device=device)  # [L]; padding keeps counting (never attended)
    logits = model(tokens, positions, cache, kv_len=L)  # [P, L, V]
    last = torch.tensor(lengths, device=device) - 1  # [P]
    last_logits = logits[torch.arange(len(rows), device=device), last].float()  # [P, V]
    return PromptState(cache, last_logits, torch.tensor(lengths, device=device), max_new_tokens)


@torch.inference_mode()
def decode_one_token(
    model: CogViewTransformer,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    cache: KVCache,
    kv_len: int,
) -> torch.Tensor:
    """Feed one token per row (``[B]``) at ``positions`` (``[B]`` per row or ``[1]`` shared; also the
    cache slots) and return the next-token logits ``[B, V]``."""
    positions = positions[:, None] if positions.numel() > 1 else positions  # [B, 1] or [1]
    return model(tokens[:, None], positions, cache, kv_len=kv_len)[:, -1]  # [B, V]


def _restrict(logits: torch.Tensor, allowed: range | torch.Tensor) -> torch.Tensor:
    """Logits of the allowed ids only: a view for a contiguous range, -inf elsewhere for a mask."""
    if isinstance(allowed, range):
        return logits[:, allowed.start : allowed.stop]  # [B, V']
    return logits.masked_fill(~allowed, float("-inf"))  # [B, V]


def _check_allowed(
    allowed: range | slice | torch.Tensor, V: int, device: torch.device
) -> range | torch.Tensor:
    if isinstance(allowed, slice):
        allowed = range(*allowed.indices(V))
    if isinstance(allowed, range):
        if allowed.step != 1 or len(allowed) == 0 or allowed.start < 0 or allowed.stop > V:
            raise ValueError(f"allowed ids {allowed} must be a non-empty contiguous range inside [0, {V})")
        return allowed
    if allowed.dtype != torch.bool or tuple(allowed.shape) != (V,) or not bool(allowed.any()):
        raise ValueError(f"allowed must be a range of ids or a bool mask of shape ({V},) with a True")
    return allowed.to(device)


@torch.inference_mode()
def sample_tokens(
    model: CogViewTransformer,
    state: PromptState,
    uniforms: torch.Tensor,
    config: SamplingConfig,
    allowed: range | slice | torch.Tensor,
) -> Iterator[torch.Tensor]:
    """Sample ``uniforms.shape[1]`` tokens for ``uniforms.shape[0]`` rows, yielding ``[N]`` ids per step.

    ``state`` holds the conditional prompt and, for classifier-free guidance, the unconditional
    one as its second row (then ``config.guidance_scale`` applies, even 1); it is expanded
    (copied), so it can seed further batches. Only ``allowed`` ids are sampled (CogView's per-mode
    masking: inside an image, image codes only). Row n takes its draw of step i from
    ``uniforms[n, i]``, so a row's tokens do not depend on the other rows.
    """
    N, steps = uniforms.shape
    if N < 1 or not 1 <= steps <= state.max_new_tokens:
        raise ValueError(
            f"uniforms of shape {tuple(uniforms.shape)}: need >= 1 row and 1..{state.max_new_tokens} steps"
        )
    guided = state.num_prompts == 2
    if config.guided and not guided:
        raise ValueError(
            f"guidance_scale={config.guidance_scale} needs the unconditional prompt prefilled as the "
            "second row: prefill(model, [prompt, uncond_prompt], ...)"
        )
    device = state.last_logits.device
    allowed = _check_allowed(allowed, state.last_logits.shape[-1], device)
    offset = allowed.start if isinstance(allowed, range) else 0
    uniforms = uniforms.to(device=device, dtype=torch.float32)
    P = state.num_prompts
    cache = state.cache.expand(N)  # rows [cond x N, uncond x N]
    logits = state.last_logits.repeat_interleave(N, dim=0)  # [P*N, V]
    L = int(state.lengths.max())
    if P == 1:
        base = state.lengths[:1]  # [1]: all rows share positions, the faster cache write
    else:
        base = state.lengths.repeat_interleave(N)  # [P*N]: per-row positions and slots
    for i in range(steps):
        logits = _restrict(logits, allowed)  # [P*N, V']
        cond = logits[:N]  # [N, V']
        if guided:
            logits = cfg_combine(cond, logits[N:], config.guidance_scale)  # [N, V']
        ids = sample_from_uniform(process_logits(logits, config, reference=cond), uniforms[:, i])  # [N]
        if offset:
            ids = ids + offset
        yield ids
        if i + 1 < steps:  # feed token i (the same for a row's cond and uncond copies)
            fed = ids if P == 1 else ids.repeat(P)  # [P*N]
            logits = decode_one_token(model, fed, base + i, cache, kv_len=L + i + 1)  # [P*N, V]
