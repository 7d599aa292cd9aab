"""FID: the Fréchet distance between Gaussians fitted to features of two image sets.

FID (Heusel et al., 2017) usually uses Inception-v3 features; their weights cannot be downloaded
here, so the extractor is pluggable (any :class:`FeatureExtractor`) and the default,
:class:`VQVAEFeatures`, pools the encoder of a VQ-VAE we trained ourselves. An FID is only
comparable with another FID computed with the same extractor (its ``name`` records which).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from scipy import linalg

from cogview.checks import positive_int
from cogview.tokenizers.image import ImageTokenizer

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@runtime_checkable
class FeatureExtractor(Protocol):
    """Images -> features ``[N, D]``; ``name`` identifies the extractor in reports."""

    name: str

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray: ...


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (float64) of features ``[N, D]``."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must have shape [N, D], got {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {features.shape[0]}; pass more images")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def _real_sqrtm(matrix: np.ndarray) -> np.ndarray | None:
    """The real square root of ``matrix``, or None when scipy's is inaccurate or not (nearly) real."""
    with warnings.catch_warnings():
        # A singular product warns here; the residual check below decides whether to retry.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(matrix)
    if not np.isfinite(root).all():
        return None
    scale = max(float(np.abs(matrix).max()), 1e-12)
    if np.abs(root @ root - matrix).max() > 1e-5 * scale:
        return None
    # Rounding gives eigenvalues of a PSD product tiny negative parts, hence tiny imaginary roots.
    if np.iscomplexobj(root):
        if np.abs(root.imag).max() > 1e-3 * max(float(np.abs(root.real).max()), 1e-12):
            return None
        root = root.real
    return root


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), the Fréchet distance of two Gaussians.

    When the square root of the product is inaccurate (a singular product, e.g. fewer samples
    than dimensions), it is taken again with ``eps`` added to both diagonals, as pytorch-fid does.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.ndim != 1 or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"expected means [D] and covariances [D, D] of one D, got mu1 {mu1.shape}, sigma1 "
            f"{sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}; use the same feature extractor for both sets"
        )
    root = _real_sqrtm(sigma1 @ sigma2)
    if root is None:
        offset = eps * np.eye(d)
        root = _real_sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if root is None:
        raise ValueError(
            "the covariance product has no accurate real square root even with eps on the diagonal; "
            "check the features for NaNs or infinities"
        )
    diff = mu1 - mu2
    distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root))
    return max(distance, 0.0)  # the distance is >= 0; rounding can take equal sets just under it


class VQVAEFeatures:
    """Per-channel mean and std over space of a VQ-VAE encoder's pre-quantisation map (D = 2 x embed_dim).

    The continuous map keeps what the codebook rounds away, and pooling makes the features
    independent of where things are, as Inception's global pool does. Images are resized and
    cropped exactly as the tokenizer does before encoding.
    """

    def __init__(self, image_tokenizer: ImageTokenizer, batch_size: int = 64) -> None:
        self.image_tokenizer = image_tokenizer
        self.batch_size = positive_int("batch_size", batch_size, type_error=ValueError)
        self.name = f"vqvae-{image_tokenizer.fingerprint}"

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        if len(images) == 0:
            raise ValueError("no images given")
        tokenizer, model = self.image_tokenizer, self.image_tokenizer.model
        chunks = []
        # fp32 whatever autocast region the caller is in: FID's square root amplifies rounding.
        with torch.inference_mode(), torch.autocast(tokenizer.device.type, enabled=False):
            for start in range(0, len(images), self.batch_size):
                pixels = tokenizer.pixels(images[start : start + self.batch_size]).float()  # B, 3, H, W
                z = model.enc_b(model.normalize(pixels)).float()  # B, C, h, w
                pooled = torch.cat([z.mean(dim=(2, 3)), z.std(dim=(2, 3), correction=0)], dim=1)  # B, 2C
                chunks.append(pooled.cpu().double().numpy())
        return np.concatenate(chunks)


def fid(
    real_images: Sequence[Image.Image], fake_images: Sequence[Image.Image], extractor: FeatureExtractor
) -> float:
    """FID between two image sets with ``extractor``'s features (lower: more alike)."""
    mu1, sigma1 = feature_statistics(extractor(real_images))
    mu2, sigma2 = feature_statistics(extractor(fake_images))
    return frechet_distance(mu1, sigma1, mu2, sigma2)


@dataclass
class ImageFolder:
    """The readable images of a folder, in file-name order, and the files that were skipped."""

    path: Path
    images: list[Image.Image]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; pass a folder of PNG or JPEG images")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _read_chunks(folder: Path, chunk: int | None = None) -> Iterator[ImageFolder]:
    """The folder's readable images ``chunk`` files at a time (None: all), each with the files it skipped."""
    files = _image_files(folder)
    chunk = chunk or max(1, len(files))
    for start in range(0, len(files), chunk):
        part = ImageFolder(folder, [])
        for file in files[start : start + chunk]:
            try:
                with Image.open(file) as im:
                    part.images.append(im.convert("RGB"))  # decodes every byte: truncated files fail here
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                part.skipped.append((file.name, f"{type(e).__name__}: {e}"))
        yield part


def _check_read(folder: Path, images: int, skipped: list[tuple[str, str]]) -> None:
    if skipped:
        logger.warning(
            "%s: skipped %d unreadable of %d image files (first: %s: %s)",
            folder,
            len(skipped),
            images + len(skipped),
            *skipped[0],
        )
    if images < 2:
        raise ValueError(
            f"{folder} has {images} readable PNG/JPEG images; FID needs at least 2 "
            "(and hundreds for a stable number)"
        )


def read_image_folder(path: str | os.PathLike) -> ImageFolder:
    """Every PNG/JPEG file directly in ``path`` as RGB; unreadable files are skipped, counted and logged."""
    folder = Path(path)
    whole = ImageFolder(folder, [])
    for part in _read_chunks(folder):
        whole.images += part.images
        whole.skipped += part.skipped
    _check_read(folder, len(whole.images), whole.skipped)
    return whole


def folder_features(
    path: str | os.PathLike, extractor: FeatureExtractor, chunk: int = 512
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """``extractor``'s features of every readable image in ``path`` and the skipped files.

    Reads ``chunk`` files at a time, so memory holds one chunk of images plus the features,
    whatever the folder's size (FID is often taken over 10,000-50,000 images).
    """
    folder = Path(path)
    features, skipped = [], []
    for part in _read_chunks(folder, chunk):
        skipped += part.skipped
        if part.images:
            features.append(extractor(part.images))
    count = sum(len(f) for f in features)
    _check_read(folder, count, skipped)
    return np.concatenate(features), skipped


def fid_from_folders(
    real_dir: str | os.PathLike, fake_dir: str | os.PathLike, extractor: FeatureExtractor, chunk: int = 512
) -> dict[str, Any]:
    """FID between the images of two folders, with the counts a report needs (JSON-friendly)."""
    report: dict[str, Any] = {"extractor": extractor.name}
    stats = []
    for side, path in (("real", real_dir), ("fake", fake_dir)):
        features, skipped = folder_features(path, extractor, chunk)
        stats.append(feature_statistics(features))
        report[side] = {"path": str(Path(path)), "images": len(features), "skipped": len(skipped)}
    return {"fid": frechet_distance(*stats[0], *stats[1]), **report}


__all__: Sequence[str] = [
    "FeatureExtractor",
    "ImageFolder",
    "VQVAEFeatures",
    "feature_statistics",
    "fid",
    "fid_from_folders",
    "folder_features",
    "frechet_distance",
    "read_image_folder",
]
