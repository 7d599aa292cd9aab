"""Pure logits processors and samplers for autoregressive decoding (SPEC 3.1, step 3).

Each function maps a ``[B, V]`` logits tensor to a new one (inputs are never modified), works
row by row at any batch size (the original's top-p worked only at batch 1) and takes its
randomness from uniforms drawn from an explicit ``torch.Generator``. Classifier-free guidance
(not in CogView) is :func:`cfg_combine`. :class:`SamplingConfig` names one setting, and
:func:`resolve_sampling` is how every job applies a call's settings to its defaults.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cogview.checks import finite_float
from cogview.config_io import from_dict_strict

NEG_INF = float("-inf")
# Below this temperature, dividing logits overflows float32: sampling is greedy (its limit) instead.
GREEDY_TEMPERATURE = 1e-6
# Guidance multiplies logit differences; past this scale they can overflow float32.
MAX_GUIDANCE_SCALE = 1e4


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings of one generation call.

    Attributes:
        temperature: logits are divided by it before filtering (> 0; the original's default 1.0).
        top_k: keep the k most likely allowed ids per row; 0 keeps all (the original's scripts use 200).
        top_p: keep the smallest set of ids whose probability reaches p (nucleus, shift-right as the
            original); 0 or 1 keep all (0 is the original's "off").
        guidance_scale: classifier-free guidance ``uncond + s * (cond - uncond)``; 1 switches it off.
        min_p: keep only ids whose probability under the *conditional* model (temperature 1, before
            guidance) is at least ``min_p`` times that of its most likely id; 0 keeps all. Unguided it
            is min-p sampling; guided it is contrastive decoding's plausibility constraint, which
            stops guidance from promoting ids that the conditional model itself finds implausible.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    guidance_scale: float = 1.0
    min_p: float = 0.0

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "guidance_scale", "min_p"):
            object.__setattr__(self, name, finite_float(name, getattr(self, name)))
        if self.temperature <= 0:
            raise ValueError(
                f"temperature must be > 0, got {self.temperature}; use top_k=1 for greedy decoding"
            )
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 keeps all ids), got {self.top_k!r}")
        object.__setattr__(self, "top_k", int(self.top_k))  # a numpy int would not serialise to JSON
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in [0, 1] (0 or 1 keep all ids), got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise ValueError(f"min_p must lie in [0, 1) (0 keeps all ids), got {self.min_p}")
        if not 0 <= self.guidance_scale <= MAX_GUIDANCE_SCALE:
            raise ValueError(
                f"guidance_scale must lie in [0, {MAX_GUIDANCE_SCALE:g}] (1 switches guidance off, 0 samples "
                f"unconditionally; beyond {MAX_GUIDANCE_SCALE:g} float32 logits overflow), got {self.guidance_scale}"
            )

    @property
    def guided(self) -> bool:
        """Whether unconditional rows are needed (any scale other than 1)."""
        return self.guidance_scale != 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SamplingConfig:
        """Build from a (possibly partial) dict; unknown keys are refused."""
        return from_dict_strict(cls, data, "sampling", noun="setting(s)")

    def replace(self, **changes: Any) -> SamplingConfig:
        """A copy with the given fields changed; ``None`` values are ignored (keep the current one)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingConfig))
# What captioning and super-resolution let a call change field by field: they have no guidance.
UNGUIDED_OVERRIDES = ("temperature", "top_k", "top_p")


def resolve_sampling(
    defaults: SamplingConfig,
    sampling: SamplingConfig | None,
    overrides: Mapping[str, Any],
    accepted: Collection[str] = SAMPLING_FIELDS,
) -> SamplingConfig:
    """The settings of one call: ``sampling`` (else the job's ``defaults``) with the non-None
    per-field ``overrides`` (``temperature=``, ``top_k=``, ...) applied.

    A name outside ``accepted`` is the TypeError an unknown keyword argument would be.
    """
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {unknown}; the sampling settings are {sorted(accepted)}"
        )
    if sampling is not None and not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a SamplingConfig or None, got {type(sampling).__name__}")
    return (defaults if sampling is None else sampling).replace(**overrides)


# --- processors: [B, V] -> [B, V] ------------------------------------------------------------


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature`` (temperature > 0); masked ids stay -inf at any temperature.

    Below :data:`GREEDY_TEMPERATURE` the division would overflow, so the row keeps only its
    most likely ids (ties kept): the limit of a vanishing temperature.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if temperature == 1.0:
        return logits
    if temperature < GREEDY_TEMPERATURE:
        return logits.masked_fill(logits < logits.max(dim=-1, keepdim=True).values, NEG_INF)
    return (logits / temperature).masked_fill(torch.isneginf(logits), NEG_INF)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep, per row, the logits >= the row's k-th largest (ties kept, as the original); k=0 keeps all."""
    if k < 0:
        raise ValueError(f"top_k must be >= 0, got {k}")
    if k == 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter per row: keep the most likely ids until their probability reaches ``p``.

    The id that crosses ``p`` is kept (the original's shift-right), so at least one id survives.
    ``p`` of 0 or 1 keeps all ids.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"top_p must lie in [0, 1], got {p}")
    if p in (0.0, 1.0):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V] each
    probs = sorted_logits.float().softmax(dim=-1)  # [B, V]
    before = probs.cumsum(dim=-1) - probs  # [B, V] probability mass of the better ids
    drop_sorted = before >= p  # [B, V]
    drop_sorted[..., 0] = False  # the most likely id always survives, even when p rounds to 0 in float32
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # [B, V] back in id order
    return logits.masked_fill(drop, NEG_INF)


def min_p_filter(logits: torch.Tensor, reference: torch.Tensor, min_p: float) -> torch.Tensor:
    """Mask ids whose probability under ``reference`` is below ``min_p`` times the row's best; 0 keeps all.

    ``reference`` (``[B, V]`` logits) is the conditional model's own distribution, so under
    guidance the kept set is what the conditional model finds plausible (its best id always is).
    """
    if not 0.0 <= min_p < 1.0:
        raise ValueError(f"min_p must lie in [0, 1), got {min_p}")
    if min_p == 0.0:
        return logits
    ref = reference.float()
    drop = ref < ref.max(dim=-1, keepdim=True).values + math.log(min_p)  # [B, V]
    return logits.masked_fill(drop, NEG_INF)


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance ``uncond + scale * (cond - uncond)``, written ``cond + (scale-1)(cond-uncond)``.

    That form returns ``cond`` bit for bit at ``scale=1``. Ids that are -inf in either input (masked
    out) stay -inf instead of becoming NaN.
    """
    if scale == 1.0:
        return cond
    out = cond + (scale - 1.0) * (cond - uncond)  # [B, V]
    return out.masked_fill(torch.isneginf(cond) | torch.isneginf(uncond), NEG_INF)


def process_logits(
    logits: torch.Tensor, config: SamplingConfig, reference: torch.Tensor | None = None
) -> torch.Tensor:
    """min-p against ``reference`` (default: ``logits`` themselves; under guidance, the conditional
    logits), then temperature, top-k and top-p (SPEC 3.1 order), in float32."""
    logits = min_p_filter(logits, logits if reference is None else reference, config.min_p)
    logits = apply_temperature(logits.float(), config.temperature)
    logits = top_k_filter(logits, config.top_k)
    return top_p_filter(logits, config.top_p)


# --- samplers: [B, V] -> [B] ------------------------------------------------------------------


def sample_from_uniform(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One id per row by inverting the CDF of ``softmax(logits)`` at ``u`` (``[B]``, in [0, 1)).

    The distribution of ``torch.multinomial``, but each row's draw depends only on its own uniform,
    so a decoding loop can take per-image random streams drawn up front: the images then do not
    depend on how they were batched. Ids with probability 0 (logit -inf) are never returned.
    """
    probs = logits.float().softmax(dim=-1)  # [B, V]
    cdf = probs.cumsum(dim=-1)  # [B, V], non-decreasing
    total = cdf[:, -1:]  # [B, 1]
    # The first id whose cdf exceeds u * total has positive probability; keeping the target
    # strictly below total guards against rounding at u close to 1.
    target = torch.minimum(u.to(cdf)[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)  # [B]
