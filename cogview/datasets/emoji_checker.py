"""Emoji alignment checker: which OpenMoji emoji a generated image shows, by its nearest reference render.

Feature space: ink = 1 - RGB in [0, 1], so the white background is zero and adds nothing to any
distance; a Gaussian blur (sigma 1 px at 32 px) and 2x2 box averaging give a 16x16x3 map (768
numbers) compared by L2. It keeps which colour sits where, and that is what tells emoji apart: a
skin tone is the colour of a known region, a flag the layout of its stripes. (A colour histogram
added to it made things worse: blur and noise move edge pixels between bins.) Generated images
are blurrier than the font by an unknown amount and may sit a pixel off, so each emoji has
references at three blurs and the query is also tried shifted by one pixel in 8 directions, on a
shortlist of the 32 emoji nearest without shifts. Renders within half a grey level RMS of each
other ("cook" and "man cook", the same flag for France and St. Martin) count as the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from cogview.datasets.base import image_array
from cogview.datasets.emoji import EmojiInfo, emoji_table, render_emoji

WORK_SIZE = 32  # images are compared at this size, whatever their input size
FEATURE_SIGMA = 1.0  # px at WORK_SIZE, before 2x2 box averaging
REFERENCE_BLURS = (0.0, 0.7, 1.2)  # extra blur of the references, for blurry generated images
SHIFTS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))  # query offsets in px
SHORTLIST = 32  # emoji kept from the unshifted pass for the shifted comparison
LOOKALIKE_RMS = 0.5 / 255  # renders closer than this (RMS over the feature map) are one answer
CHUNK = 64  # images per batch of the shifted pass (bounds memory)


def _ink(images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
    """Ink (B, 32, 32, 3) float32 in [0, 1], 0 = white, from PIL images or HxWx3 uint8 arrays."""
    return np.stack([1.0 - image_array(image, WORK_SIZE) / 255.0 for image in images]).astype(np.float32)


def _blur(ink: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(ink, (0, sigma, sigma, 0), mode="constant")  # (B, 32, 32, 3)


def _pool(blurred: np.ndarray) -> np.ndarray:
    """(B, 32, 32, 3) -> (B, 768): 2x2 box averages (strided sums: much faster than a 6-d mean)."""
    x = blurred
    pooled = (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) * 0.25
    return pooled.reshape(len(x), -1)


def _shift(ink: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move the content by (dy, dx) pixels; uncovered pixels become white (zero ink)."""
    n = ink.shape[1]
    out = np.zeros_like(ink)
    out[:, max(dy, 0) : n + min(dy, 0), max(dx, 0) : n + min(dx, 0)] = ink[
        :, max(-dy, 0) : n + min(-dy, 0), max(-dx, 0) : n + min(-dx, 0)
    ]
    return out


class EmojiChecker:
    """Nearest-render recogniser over every emoji of `infos`, given their 32-px `renders`."""

    def __init__(self, renders: np.ndarray, infos: Sequence[EmojiInfo]) -> None:
        if renders.shape != (len(infos), WORK_SIZE, WORK_SIZE, 3):
            raise ValueError(
                f"renders must be (N, {WORK_SIZE}, {WORK_SIZE}, 3) uint8 for N = {len(infos)} emoji, "
                f"got {renders.shape}"
            )
        self.infos = tuple(infos)
        self.index = {info.emoji: i for i, info in enumerate(self.infos)}
        ink = 1.0 - renders.astype(np.float32) / 255.0
        self.references = np.stack(
            [_pool(_blur(ink, math.hypot(FEATURE_SIGMA, b))) for b in REFERENCE_BLURS], axis=1
        )  # (N, K, F)
        self.reference_norms = (self.references**2).sum(-1)  # (N, K)
        self.coarse = np.ascontiguousarray(self.references[:, 1])  # (N, F) for the shortlist
        self.lookalikes = self._find_lookalikes(np.ascontiguousarray(self.references[:, 0]))

    @classmethod
    def build(cls) -> EmojiChecker:
        """A checker over the whole emoji dataset (renders all of it once: a few seconds)."""
        infos = emoji_table()
        renders = np.stack([np.asarray(render_emoji(info.emoji, WORK_SIZE)) for info in infos])
        return cls(renders, infos)

    @staticmethod
    def _find_lookalikes(clean: np.ndarray) -> tuple[tuple[int, ...], ...]:
        """For each emoji, the emoji (itself included) whose clean features are within LOOKALIKE_RMS."""
        feats = clean  # (N, F) float32: its rounding (1e-5 here) is far below the limit (3e-3)
        norms = (feats**2).sum(1)
        limit = LOOKALIKE_RMS**2 * feats.shape[1]
        out: list[tuple[int, ...]] = []
        for start in range(0, len(feats), 512):
            block = feats[start : start + 512]
            dist = norms[start : start + 512, None] + norms[None] - 2 * block @ feats.T  # (b, N)
            out.extend(tuple(np.flatnonzero(row <= limit).tolist()) for row in dist)
        return tuple(out)

    def _nearest(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """Index of the nearest emoji for each image, (B,)."""
        n, k, f = self.references.shape
        out = np.empty(len(images), dtype=np.int64)
        for start in range(0, len(images), CHUNK):
            blurred = _blur(_ink(images[start : start + CHUNK]), FEATURE_SIGMA)  # (B, 32, 32, 3)
            b = len(blurred)
            # ||q - r||^2 up to the constant ||q||^2, against the middle blur only (a third of the work).
            coarse = self.reference_norms[:, 1][None] - 2 * _pool(blurred) @ self.coarse.T  # (B, N)
            short = np.argpartition(coarse, min(SHORTLIST, n - 1), axis=1)[:, :SHORTLIST]  # (B, S)
            s = short.shape[1]
            # Blur and shift commute away from the border, where the ink is zero anyway.
            queries = np.stack([_pool(_shift(blurred, dy, dx)) for dy, dx in SHIFTS], 1)  # (B, 9, F)
            cands = self.references[short].reshape(b, s * k, f)  # (B, S*K, F)
            dist = (
                (queries**2).sum(-1)[:, :, None]
                + self.reference_norms[short].reshape(b, 1, s * k)
                - 2 * queries @ cands.transpose(0, 2, 1)
            )  # (B, 9, S*K)
            best = dist.reshape(b, len(SHIFTS), s, k).min(axis=(1, 3))  # (B, S)
            out[start : start + b] = short[np.arange(b), best.argmin(1)]
        return out

    def nearest(self, images: Sequence[Image.Image | np.ndarray]) -> list[str]:
        """The emoji whose reference render is nearest to each image."""
        return [self.infos[i].emoji for i in self._nearest(images)]

    def check(
        self, images: Sequence[Image.Image | np.ndarray], emojis: Sequence[str]
    ) -> list[dict[str, Any]]:
        """For each image and the emoji it was asked for: {"emoji", "base", "tone": bool, "nearest": str}.

        "emoji": the nearest render is that emoji or a look-alike of it; "base" / "tone": some
        look-alike of the nearest render has the asked base / skin tone (tone None = no tone).
        """
        if len(images) != len(emojis):
            raise ValueError(f"need one emoji per image, got {len(images)} images and {len(emojis)} emoji")
        unknown = [e for e in emojis if e not in self.index]
        if unknown:
            raise ValueError(f"not emoji of the dataset: {unknown[:5]}; pass example.attributes['emoji']")
        results = []
        for emoji, found in zip(emojis, self._nearest(images), strict=True):
            target = self.infos[self.index[emoji]]
            group = [self.infos[j] for j in self.lookalikes[found]]
            results.append(
                {
                    "emoji": self.index[emoji] in self.lookalikes[found],
                    "base": any(g.base == target.base for g in group),
                    "tone": any(g.tone == target.tone for g in group),
                    "nearest": self.infos[found].emoji,
                }
            )
        return results
