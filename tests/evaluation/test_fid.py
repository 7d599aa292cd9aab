"""FID: the Fréchet distance's algebra, the VQ-VAE extractor, pluggable extractors, folders and the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cogview.cli import main
from cogview.datasets import digits, shapes
from cogview.evaluation.fid import (
    FeatureExtractor,
    VQVAEFeatures,
    feature_statistics,
    fid,
    folder_features,
    frechet_distance,
    read_image_folder,
)
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS


@pytest.fixture(scope="module")
def tokenizer() -> ImageTokenizer:
    torch.manual_seed(0)
    return ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"]))


def gaussian_features(seed: int, n: int = 200, d: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)


def shapes_images(n: int, seed: int) -> list[Image.Image]:
    return [ex.image for ex in shapes.load("train", n=n, seed=seed)]


def digits_images(n: int) -> list[Image.Image]:
    return [ex.image for ex in digits.load("test")[:n]]


def test_identical_statistics_are_at_distance_zero() -> None:
    mu, sigma = feature_statistics(gaussian_features(0))
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)


def test_distance_is_symmetric() -> None:
    a, b = feature_statistics(gaussian_features(0)), feature_statistics(gaussian_features(1))
    assert frechet_distance(*a, *b) == pytest.approx(frechet_distance(*b, *a), rel=1e-6)
    assert frechet_distance(*a, *b) > 0.1


@pytest.mark.parametrize(("mu1", "s1", "mu2", "s2"), [(0.0, 1.0, 0.0, 2.0), (1.5, 0.3, -2.0, 1.7)])
def test_one_dimensional_gaussians_match_the_closed_form(
    mu1: float, s1: float, mu2: float, s2: float
) -> None:
    # Covariances are variances: the distance is (mu1 - mu2)^2 + (s1 - s2)^2 in standard deviations.
    got = frechet_distance(np.array([mu1]), np.array([[s1**2]]), np.array([mu2]), np.array([[s2**2]]))
    assert got == pytest.approx((mu1 - mu2) ** 2 + (s1 - s2) ** 2, rel=1e-9)


def test_shifting_features_by_a_constant_adds_its_squared_norm() -> None:
    features = gaussian_features(2)
    c = np.array([0.5, -1.0, 2.0, 0.0, 3.0])
    got = frechet_distance(*feature_statistics(features), *feature_statistics(features + c))
    assert got == pytest.approx(float(c @ c), rel=1e-6)


def exact_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Tr sqrt(S1 S2) as the sum of sqrt eigenvalues of the symmetric S1^1/2 S2 S1^1/2: stable when singular."""
    w, v = np.linalg.eigh(s1)
    half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    root_trace = np.sqrt(np.clip(np.linalg.eigvalsh(half @ s2 @ half), 0, None)).sum()
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * root_trace)


@pytest.mark.parametrize("seed", range(10))
def test_a_singular_covariance_product_gives_the_exact_distance(seed: int) -> None:
    # Two samples in 16 dimensions, half of them constant in one set: both covariances are
    # singular and scipy's square root of the product is complex (seed 6 needs the eps retry).
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(2, 16)), rng.normal(size=(2, 16))
    y[:, :8] = 0
    a, b = feature_statistics(x), feature_statistics(y)
    assert frechet_distance(*a, *b) == pytest.approx(exact_distance(*a, *b), rel=1e-5)


def test_bad_shapes_and_too_few_samples_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_statistics(np.zeros((1, 3)))


def test_same_distribution_is_closer_than_another_dataset(tokenizer: ImageTokenizer) -> None:
    extractor = VQVAEFeatures(tokenizer, batch_size=32)
    same = fid(shapes_images(48, seed=1), shapes_images(48, seed=2), extractor)
    other = fid(shapes_images(48, seed=1), digits_images(48), extractor)
    assert 0 <= same < other / 3


def test_vqvae_features_pool_mean_and_std_per_channel_and_are_deterministic(
    tokenizer: ImageTokenizer,
) -> None:
    extractor = VQVAEFeatures(tokenizer, batch_size=3)
    images = shapes_images(5, seed=0) + [digits_images(1)[0].resize((50, 40))]  # any size is resized
    features = extractor(images)
    assert features.shape == (6, 2 * tokenizer.config.embed_dim)
    assert (features[:, tokenizer.config.embed_dim :] >= 0).all()  # the std half
    np.testing.assert_array_equal(features, VQVAEFeatures(tokenizer, batch_size=64)(images))
    assert extractor.name == f"vqvae-{tokenizer.fingerprint}"


def test_a_custom_extractor_plugs_in() -> None:
    class MeanColour:
        name = "mean-colour"

        def __call__(self, images: list[Image.Image]) -> np.ndarray:
            return np.stack([np.asarray(im, dtype=np.float64).mean(axis=(0, 1)) for im in images])

    extractor = MeanColour()
    assert isinstance(extractor, FeatureExtractor)
    real, fake = shapes_images(16, seed=1), digits_images(16)
    expected = frechet_distance(*feature_statistics(extractor(real)), *feature_statistics(extractor(fake)))
    assert fid(real, fake, extractor) == pytest.approx(expected) and expected > 0


def write_folder(folder: Path, images: list[Image.Image], broken: bool = False) -> Path:
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        im.save(folder / f"{i:03d}.{'jpg' if i % 2 else 'png'}")
    if broken:
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_the_folder_reader_skips_and_counts_a_broken_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_folder(tmp_path / "imgs", shapes_images(3, seed=0), broken=True)
    with caplog.at_level(logging.WARNING):
        read = read_image_folder(folder)
    assert len(read.images) == 3 and [name for name, _ in read.skipped] == ["broken.png"]
    assert all(im.mode == "RGB" for im in read.images)
    assert "skipped 1 unreadable of 4" in caplog.text
    with pytest.raises(ValueError, match="at least 2"):
        read_image_folder(write_folder(tmp_path / "one", shapes_images(1, seed=0), broken=True))
    with pytest.raises(ValueError, match="not a folder"):
        read_image_folder(tmp_path / "missing")


def test_folder_features_stream_in_chunks_with_the_same_result(
    tokenizer: ImageTokenizer, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "imgs", shapes_images(7, seed=2), broken=True)
    extractor = VQVAEFeatures(tokenizer, batch_size=3)
    whole = extractor(read_image_folder(folder).images)
    calls = []

    def counting(images):
        calls.append(len(images))
        return extractor(images)

    counting.name = extractor.name
    streamed, skipped = folder_features(folder, counting, chunk=3)
    assert calls == [3, 3, 1] and [name for name, _ in skipped] == ["broken.png"]  # 8 files, 3 at a time
    np.testing.assert_allclose(streamed, whole, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        folder_features(write_folder(tmp_path / "one", shapes_images(1, seed=0), broken=True), extractor)


def test_cli_end_to_end_writes_json(
    tokenizer: ImageTokenizer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokenizer.save_pretrained(tmp_path / "tok")
    real = write_folder(tmp_path / "real", shapes_images(6, seed=1), broken=True)
    fake = write_folder(tmp_path / "fake", digits_images(6))
    out = tmp_path / "report" / "fid.json"
    args = [
        "fid",
        str(real),
        str(fake),
        "--model",
        str(tmp_path / "tok"),
        "--batch-size",
        "4",
        "--device",
        "cpu",
    ]
    assert main([*args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["fid"] > 0 and report["extractor"] == f"vqvae-{tokenizer.fingerprint}"
    assert report["real"]["images"] == 6 and report["real"]["skipped"] == 1
    assert report["fake"]["images"] == 6 and report["fake"]["skipped"] == 0
    printed = capsys.readouterr().out
    assert f"FID {report['fid']:.4f}" in printed and "real: 6 images, 1 unreadable skipped" in printed
    assert main(["fid", str(tmp_path / "missing"), str(fake), "--model", str(tmp_path / "tok")]) == 2
    assert "not a folder" in capsys.readouterr().err
