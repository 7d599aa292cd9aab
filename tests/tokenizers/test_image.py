"""ImageTokenizer: PIL/tensor inputs, save/load round trip, clear errors on broken folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cogview.serialization import CheckpointError
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS, VQVAEConfig


@pytest.fixture
def tokenizer() -> ImageTokenizer:
    torch.manual_seed(0)
    return ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"]))


def test_encode_pil_of_any_size_and_decode_to_pil(tokenizer: ImageTokenizer) -> None:
    images = [Image.new("RGB", (48, 40), (200, 30, 30)), Image.new("L", (32, 32), 128)]
    codes = tokenizer.encode(images)
    assert codes.shape == (2, 8, 8)
    out = tokenizer.decode(codes)
    assert len(out) == 2 and out[0].size == (32, 32) and out[0].mode == "RGB"


def test_tensor_and_pil_inputs_agree(tokenizer: ImageTokenizer) -> None:
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pil = [Image.fromarray((p.permute(1, 2, 0) * 255).round().byte().numpy()) for p in pixels]
    quantised = torch.stack([torch.tensor(np.array(im)).permute(2, 0, 1) for im in pil]).float() / 255
    assert torch.equal(tokenizer.encode(pil), tokenizer.encode(quantised))


def test_save_load_round_trip_gives_identical_codes(tokenizer: ImageTokenizer, tmp_path: Path) -> None:
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = ImageTokenizer.from_pretrained(tmp_path / "tok")
    assert torch.equal(tokenizer.encode(pixels), loaded.encode(pixels))
    codes = tokenizer.encode(pixels)
    assert torch.equal(tokenizer.decode_pixels(codes), loaded.decode_pixels(codes))
    assert tokenizer.fingerprint == loaded.fingerprint


def test_truncated_weights_are_refused_clearly(tokenizer: ImageTokenizer, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="may be truncated"):
        ImageTokenizer.from_pretrained(tmp_path)


def test_mismatched_config_is_refused_naming_the_shapes(tokenizer: ImageTokenizer, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["n_embed"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatch.*quantize_t.embed.*\(8, 32\).*\(8, 64\)"):
        ImageTokenizer.from_pretrained(tmp_path)


def test_foreign_and_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        ImageTokenizer.from_pretrained(tmp_path / "nothing")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ImageTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "transformer"}))
    with pytest.raises(CheckpointError, match="does not describe a VQ-VAE"):
        ImageTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**VQVAEConfig().to_dict(), "bogus": 1}))
    with pytest.raises(CheckpointError, match="bogus"):
        ImageTokenizer.from_pretrained(tmp_path)


def test_bad_tensor_shape_is_a_clear_error(tokenizer: ImageTokenizer) -> None:
    with pytest.raises(ValueError, match=r"expected a float tensor \(B, 3, H, W\)"):
        tokenizer.encode(torch.rand(3, 32, 32))


def test_encode_at_another_size_gives_a_proportional_grid(tokenizer: ImageTokenizer) -> None:
    image = Image.new("RGB", (64, 64), (10, 200, 30))
    assert tokenizer.encode([image], size=64).shape == (1, 16, 16)
    assert tokenizer.decode(tokenizer.encode([image], size=64))[0].size == (64, 64)
    with pytest.raises(ValueError, match="multiple of 4"):
        tokenizer.encode([image], size=30)


def test_codes_of_round_trips_and_a_malformed_one_is_refused(tokenizer: ImageTokenizer, tmp_path: Path) -> None:
    kept = tokenizer.keeping_codes(tokenizer.model)
    kept.save_pretrained(tmp_path / "kept")
    loaded = ImageTokenizer.from_pretrained(tmp_path / "kept")
    assert loaded.codes_of == kept.codes_of and loaded.fingerprints == (loaded.fingerprint, tokenizer.fingerprint)
    config = json.loads((tmp_path / "kept" / "config.json").read_text())
    config["codes_of"] = {"fingerprints": "not a list", "codes_fingerprint": 3}
    (tmp_path / "kept" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="codes_of must hold"):
        ImageTokenizer.from_pretrained(tmp_path / "kept")
