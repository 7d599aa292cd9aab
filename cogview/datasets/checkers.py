"""Prompt-alignment checkers for generated images: a shapes attribute detector and a digit classifier.

Generated images are blurry VQ-VAE reconstructions, so both checkers work on resized, contrast-
normalised pixels and avoid brittle thresholds. Shapes: background = palette colour nearest the
border median; foreground = pixels projecting past halfway from the background towards the
nearest other palette colour; shape = the ideal circle / square / upward triangle of the same
area and centroid with the highest IoU; position = nearest anchor to the shape's box centre.
Digits: HOG-like orientation histograms plus pixels, RBF SVM, trained on the train split with
shift and blur augmentation (`DigitClassifier.fit_default()`, deterministic, a few seconds).
Emoji: nearest OpenMoji reference render, `EmojiChecker.build()` (in `emoji_checker`, re-exported).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from cogview.datasets.base import image_array
from cogview.datasets.emoji_checker import EmojiChecker as EmojiChecker  # re-export
from cogview.datasets.shapes import ANCHORS, PALETTE, UNIT

logger = logging.getLogger(__name__)

SHAPE_FIELDS = ("colour", "background", "shape", "position")
WORK_SIZE = 64  # shapes are analysed at this resolution, whatever the input size
_PALETTE_NAMES = tuple(PALETTE)
_PALETTE_RGB = np.array([rgb for rgb, _ in PALETTE.values()], dtype=np.float32)  # (P, 3)


def _nearest_palette(rgb: np.ndarray, exclude: int | None = None) -> int:
    d = np.linalg.norm(_PALETTE_RGB - rgb, axis=-1)  # (P,)
    if exclude is not None:
        d[exclude] = np.inf
    return int(np.argmin(d))


def _template_iou(mask: np.ndarray, shape: str, cx: float, cy: float, area: float) -> tuple[float, float]:
    """IoU of `mask` with the ideal `shape` of `area` whose centroid is (cx, cy); also its box centre y."""
    n = mask.shape[0]
    sub = 4  # supersample the template for sub-pixel accuracy
    coords = (np.arange(n * sub) + 0.5) / sub
    x, y = coords[None, :], coords[:, None]
    if shape == "circle":
        r = np.sqrt(area / np.pi)
        tmpl, box_cy = (x - cx) ** 2 + (y - cy) ** 2 <= r * r, cy
    elif shape == "square":
        h = np.sqrt(area) / 2
        tmpl, box_cy = (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h), cy
    else:  # upward isosceles triangle with base = height; centroid is 2/3 of the way from the apex
        side = np.sqrt(2 * area)
        apex = cy - 2 * side / 3
        frac = (y - apex) / side  # 0 at the apex, 1 at the base
        tmpl = (frac >= 0) & (frac <= 1) & (np.abs(x - cx) <= frac * side / 2)
        box_cy = apex + side / 2
    cover = tmpl.reshape(n, sub, n, sub).mean(axis=(1, 3))  # (n, n) fractional coverage
    inter = np.minimum(cover, mask).sum()
    union = np.maximum(cover, mask).sum()
    return float(inter / max(union, 1e-6)), float(box_cy)


def detect_shape_attributes(image: Image.Image | np.ndarray) -> dict[str, Any]:
    """Colour, background, shape and position of a shapes-style image (any size).

    Returns names as in `cogview.datasets.shapes` ("red", "circle", "left", ...); a field is None
    when the image holds no foreground at all. Also returns "iou" (the best template fit).
    """
    px = image_array(image, WORK_SIZE)  # (W, W, 3)
    n = WORK_SIZE
    border = np.concatenate(
        [px[:2].reshape(-1, 3), px[-2:].reshape(-1, 3), px[:, :2].reshape(-1, 3), px[:, -2:].reshape(-1, 3)]
    )
    bg = _nearest_palette(np.median(border, axis=0))
    bg_rgb = _PALETTE_RGB[bg]
    dist = np.linalg.norm(px - bg_rgb, axis=-1)  # (W, W)
    far = np.percentile(dist, 99.5)
    result: dict[str, Any] = {
        "colour": None,
        "background": _PALETTE_NAMES[bg],
        "shape": None,
        "position": None,
        "iou": 0.0,
    }
    if far < 30.0:  # nothing stands out from the background
        return result
    core = px[dist >= 0.7 * far]  # (K, 3) least blurred foreground pixels
    fg = _nearest_palette(np.median(core, axis=0), exclude=bg)
    result["colour"] = _PALETTE_NAMES[fg]
    # Fraction of the way from background to foreground colour, lightly smoothed against noise.
    axis = _PALETTE_RGB[fg] - bg_rgb
    t = ((px - bg_rgb) @ axis) / float(axis @ axis)  # (W, W)
    t = ndimage.uniform_filter(np.clip(t, 0.0, 1.0), size=3, mode="nearest")
    labels, count = ndimage.label(t > 0.5)
    if count == 0:
        return result
    sizes = np.bincount(labels.ravel())[1:]
    mask = (labels == 1 + int(np.argmax(sizes))).astype(np.float32)  # (W, W) largest component
    area = float(mask.sum())
    if area < 4:
        return result
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5  # pixel centres at i + 0.5
    fits = {s: _template_iou(mask, s, cx, cy, area) for s in ("circle", "square", "triangle")}
    best = max(fits, key=lambda s: fits[s][0])
    iou, box_cy = fits[best]
    scale = UNIT / n
    bx, by = cx * scale, box_cy * scale
    position = min(ANCHORS, key=lambda p: (ANCHORS[p][0] - bx) ** 2 + (ANCHORS[p][1] - by) ** 2)
    result.update(shape=best, position=position, iou=iou)
    return result


def check_shapes(image: Image.Image | np.ndarray, attributes: dict[str, Any]) -> dict[str, bool]:
    """Per-field agreement of the detected attributes with `attributes`, plus "all"."""
    missing = [f for f in SHAPE_FIELDS if f not in attributes]
    if missing:
        raise ValueError(f"attributes lack {missing}; pass a shapes example's .attributes")
    found = detect_shape_attributes(image)
    out = {f: found[f] == attributes[f] for f in SHAPE_FIELDS}
    out["all"] = all(out.values())
    return out


# --- digits -------------------------------------------------------------------------------

DIGIT_SIZE = 32  # images are brought to this size before feature extraction
_HOG_SIZE, _HOG_CELL, _HOG_BINS = 16, 4, 9


def _ink(images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
    """Ink maps (N, 32, 32) in [0, 1] (1 = darkest), each stretched between its paper and ink levels."""
    grey = np.stack([image_array(im, DIGIT_SIZE).mean(axis=-1) for im in images]) / 255.0  # (N, 32, 32)
    ink = 1.0 - grey
    flat = ink.reshape(len(ink), -1)
    lo = np.percentile(flat, 5, axis=1)[:, None, None]
    hi = np.maximum(np.percentile(flat, 99, axis=1)[:, None, None], lo + 0.1)
    return np.clip((ink - lo) / (hi - lo), 0.0, 1.0)


def digit_features(ink: np.ndarray) -> np.ndarray:
    """Features (N, F) from ink maps (N, 32, 32): per-cell gradient orientation histograms + 16x16 pixels."""
    n = len(ink)
    small = ink.reshape(n, _HOG_SIZE, 2, _HOG_SIZE, 2).mean(axis=(2, 4))  # (N, 16, 16) box downsample
    gy, gx = np.gradient(small, axis=(1, 2))
    mag = np.hypot(gx, gy)
    ang = (np.arctan2(gy, gx) % np.pi) / np.pi * _HOG_BINS  # unsigned orientation in [0, bins)
    lower = np.floor(ang)
    frac = ang - lower
    b0 = lower.astype(int) % _HOG_BINS
    b1 = (b0 + 1) % _HOG_BINS
    cells = _HOG_SIZE // _HOG_CELL
    ci = np.arange(_HOG_SIZE) // _HOG_CELL
    cell = ci[:, None] * cells + ci[None, :]  # (16, 16) cell id
    base = (np.arange(n) * cells * cells)[:, None, None] + cell[None]  # (N, 16, 16)
    total = n * cells * cells * _HOG_BINS
    hist = np.bincount((base * _HOG_BINS + b0).ravel(), (mag * (1 - frac)).ravel(), total)
    hist += np.bincount((base * _HOG_BINS + b1).ravel(), (mag * frac).ravel(), total)
    hist = hist.reshape(n, cells * cells, _HOG_BINS)
    hist /= np.linalg.norm(hist, axis=-1, keepdims=True) + 0.1
    return np.concatenate([hist.reshape(n, -1), 0.5 * small.reshape(n, -1)], axis=1)


def _augment(ink: np.ndarray) -> np.ndarray:
    """The ink maps plus one-pixel shifts and two blurs, which generated digits typically show."""
    out = [ink]
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        out.append(ndimage.shift(ink, (0, dy, dx), order=0, mode="constant", cval=0.0))
    for sigma in (0.8, 1.3):
        out.append(ndimage.gaussian_filter(ink, (0, sigma, sigma), mode="nearest"))
    return np.concatenate(out)


class DigitClassifier:
    """Recognises the digit in 0..9 of dark-on-light digit images (any size, RGB or grey)."""

    def __init__(self, c: float = 10.0, augment: bool = True) -> None:
        if c <= 0:
            raise ValueError(f"c (SVM regularisation) must be positive, got {c}")
        self.c = c
        self.augment = augment
        self.model: Any = None

    def fit(self, images: Sequence[Image.Image | np.ndarray], labels: Sequence[int]) -> DigitClassifier:
        """Train on `images` with digit `labels` (deterministic)."""
        from sklearn.svm import SVC

        if len(images) != len(labels) or len(images) == 0:
            raise ValueError(
                f"need as many labels as images (> 0), got {len(images)} images, {len(labels)} labels"
            )
        ink = _ink(images)
        y = np.asarray(labels, dtype=int)
        if self.augment:
            reps = len(_augment(ink[:1]))
            ink, y = _augment(ink), np.tile(y, reps)
        self.model = SVC(C=self.c, gamma="scale").fit(digit_features(ink), y)
        logger.info("trained digit classifier on %d images (%d after augmentation)", len(labels), len(y))
        return self

    @classmethod
    def fit_default(cls, size: int = 32) -> DigitClassifier:
        """A classifier trained on the digits train split rendered at `size`."""
        from cogview.datasets import digits

        train = digits.load("train", size=size)
        return cls().fit([e.image for e in train], [e.attributes["digit"] for e in train])

    def predict(self, images: Sequence[Image.Image | np.ndarray]) -> list[int]:
        """The predicted digit of each image."""
        if self.model is None:
            raise ValueError(
                "the classifier is not trained; call fit() or DigitClassifier.fit_default() first"
            )
        if len(images) == 0:
            return []
        return [int(d) for d in self.model.predict(digit_features(_ink(images)))]
