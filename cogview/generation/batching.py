"""Batch mechanics shared by every generation job: per-item random streams, compute dtypes, and
chunking that halves the batch on out-of-memory errors.

Each generated item (an image, a caption, an upscaled image) draws its randomness from its own
stream seeded by :func:`image_seed` ``(seed, index)``, so results do not depend on how a call is
batched or chunked.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from cogview.checks import positive_int

logger = logging.getLogger(__name__)

T = TypeVar("T")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Compute dtype when none is given: float32 on every device (docs/generation.md). On CPUs without
# native bf16 instructions bfloat16 was not faster overall; on GPUs the small fp32 models this
# project trains are bound by kernel launches, and bf16 measured 1.1-20x slower than fp32 on an
# H200. Models saved in bf16 (convert-original --dtype bf16) compute in their own dtype anyway.
DEFAULT_DTYPES = {"cpu": torch.float32, "cuda": torch.float32}


def image_seed(seed: int, index: int) -> int:
    """Seed of image ``index`` of a call with ``seed``: a 63-bit hash, so streams never overlap by offset."""
    digest = hashlib.sha256(f"cogview-image:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def image_uniforms(seeds: Sequence[int], steps: int) -> torch.Tensor:
    """``[N, steps]`` uniforms, row n from a CPU generator seeded with ``seeds[n]`` (device independent)."""
    return torch.stack(
        [torch.rand(steps, generator=torch.Generator().manual_seed(s)) for s in seeds]
    )  # [N, steps]


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """The compute dtype for ``device``: the given one (checked) or the device's default."""
    if dtype is None:
        return DEFAULT_DTYPES.get(device.type, torch.float32)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype {dtype} is not one of {sorted(DTYPES)}")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError(
            "float16 is not supported for generation on CPU (no fast kernels, and activations can "
            "overflow); use bfloat16 or float32 there, float16 on a GPU"
        )
    return dtype


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` reports an exhausted device or host allocator."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message
    )


def run_chunked(n: int, max_batch_size: int, run: Callable[[int, int], T]) -> list[T]:
    """``run(start, size)`` over ``[0, n)`` in chunks of at most ``max_batch_size``.

    On an out-of-memory error the chunk size is halved and the chunk retried (down to 1, then the
    error is raised); later chunks keep the smaller size. Returns the results in order.
    """
    positive_int("max_batch_size", max_batch_size)
    results: list[T] = []
    start, size = 0, max_batch_size
    while start < n:
        size = min(size, n - start)
        try:
            results.append(run(start, size))
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not is_out_of_memory(e) or size == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            logger.warning("out of memory at batch size %d; retrying with %d", size, size // 2)
            size //= 2
            continue
        start += size
    return results


def progress_bar(enabled: bool, total: int, desc: str = "generating") -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", desc=desc, leave=False, dynamic_ncols=True)
