"""Sliding-window geometry of token-space super-resolution (CogView's ``magnify``, SPEC 3.4).

The released model magnified a 32x32 code grid to 64x64 with nine overlapping windows: each
conditions on a 16x16 crop of the low-res codes and fills the 32x32 high-res window covering the
same pixels, at a stride of half a window. We keep that geometry but let the window size and the
grid be anything, so one model trained on small windows upscales images of any size, and the
windows of training rows are the ones inference visits.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Window(NamedTuple):
    """One window: top-left corner and side in *low-res* code units; high-res is 2x each."""

    top: int
    left: int
    size: int

    def low(self, codes: np.ndarray) -> np.ndarray:
        """The ``(size, size)`` crop of a low-res code grid ``(h, w)``."""
        return codes[self.top : self.top + self.size, self.left : self.left + self.size]

    def high_slices(self) -> tuple[slice, slice]:
        """Row and column slices of the window in the 2x high-res code grid."""
        t, left, s = 2 * self.top, 2 * self.left, 2 * self.size
        return slice(t, t + s), slice(left, left + s)


def _starts(extent: int, size: int, stride: int) -> list[int]:
    """Window starts covering ``[0, extent)``: every ``stride``, plus a last one flush with the end."""
    starts = list(range(0, extent - size + 1, stride))
    if starts[-1] != extent - size:
        starts.append(extent - size)
    return starts


def magnify_windows(height: int, width: int, size: int, stride: int | None = None) -> list[Window]:
    """The windows that cover a ``(height, width)`` low-res code grid, in the order to fill them.

    Order is raster order over window rows and columns (the original visited the middle row
    centre-first; with teacher forcing of filled tokens either order conditions every window on
    its already-generated neighbours above and to the left).

    Args:
        size: window side in low-res codes (the model was trained on this size).
        stride: step between windows; default ``size // 2`` as in the original (overlap of half).
    """
    stride = size // 2 if stride is None else stride
    if size < 1 or stride < 1 or stride > size:
        raise ValueError(f"need 1 <= stride <= size, got size={size}, stride={stride}")
    if height < size or width < size:
        raise ValueError(
            f"a {height}x{width} code grid is smaller than the {size}x{size} super-resolution window; "
            f"the input image must be at least {size} codes on each side"
        )
    return [
        Window(t, left, size) for t in _starts(height, size, stride) for left in _starts(width, size, stride)
    ]
