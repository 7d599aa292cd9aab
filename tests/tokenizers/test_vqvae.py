"""VQ-VAE behaviour: code shapes and ranges, EMA updates only in training, straight-through, restarts."""

from __future__ import annotations

import pytest
import torch

from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS, VQVAEConfig, original_config


def tiny(**kw) -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(VQVAEConfig(**{**VQVAE_PRESETS["tiny"].to_dict(), **kw}))


def test_encode_gives_codes_in_range_with_grid_shape() -> None:
    model = tiny()
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    codes = model.encode(pixels)
    assert codes.shape == (3, 8, 8) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < model.config.n_embed
    assert model.decode(codes).shape == pixels.shape


def test_decode_rejects_out_of_range_codes() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 32\)"):
        model.decode(torch.full((1, 8, 8), 32))


def test_codebook_changes_only_in_train_mode() -> None:
    model = tiny()
    pixels = torch.rand(4, 3, 32, 32)
    before = model.quantize_t.embed.clone()
    model.eval()
    model(pixels)
    assert torch.equal(model.quantize_t.embed, before)
    model.train()
    model(pixels)
    assert not torch.equal(model.quantize_t.embed, before)


def test_straight_through_gradient_reaches_encoder() -> None:
    model = tiny()
    out = model(torch.rand(2, 3, 32, 32))
    out["loss"].backward()
    grad = model.enc_b.blocks[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.quantize_t.embed.grad is None  # the codebook is a buffer, learned by EMA only


def test_dead_code_restart_revives_unused_codes() -> None:
    model = tiny(restart_threshold=1e9)  # every code counts as dead
    model.train()
    pixels = torch.rand(8, 3, 32, 32)
    model(pixels, generator=torch.Generator().manual_seed(0), restart=True)
    assert torch.equal(model.quantize_t.cluster_size, torch.ones(32))
    with torch.no_grad():
        z = model.enc_b(model.normalize(pixels)).permute(0, 2, 3, 1).reshape(-1, model.config.embed_dim)
    # restarted codes are copies of encoder outputs of this batch
    dists = torch.cdist(model.quantize_t.embed.t(), z).min(1).values
    assert float(dists.max()) < 1e-3


def test_restart_is_deterministic_given_the_generator() -> None:
    a, b = tiny(restart_threshold=0.5), tiny(restart_threshold=0.5)
    pixels = torch.rand(8, 3, 32, 32)
    for m in (a, b):
        m.quantize_t.cluster_size.zero_()
        m(pixels, generator=torch.Generator().manual_seed(3), restart=True)
    assert torch.equal(a.quantize_t.embed, b.quantize_t.embed)


def test_original_config_matches_released_layout() -> None:
    with torch.device("meta"):
        model = VQVAE(original_config())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["enc_b.blocks.0.weight"] == (512, 3, 4, 4)
    assert shapes["enc_b.blocks.6.weight"] == (256, 512, 1, 1)
    assert shapes["quantize_t.embed"] == (256, 8192)
    assert shapes["quantize_t.embed_avg"] == (256, 8192)
    assert shapes["dec.blocks.0.weight"] == (256, 512, 4, 4)  # ConvTranspose: [in, out, k, k]
    assert shapes["dec.blocks.6.weight"] == (3, 512, 1, 1)
    assert len(shapes) == 19
    conv_params = sum(v.numel() for k, v in model.named_parameters())
    assert 18.9e6 < conv_params < 19.1e6  # SPEC.md 2.2: about 19.0M


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"image_size": 30, "n_down": 2}, "not divisible by 2\\*\\*n_down=4"),
        ({"n_embed": 0}, "n_embed must be positive"),
        ({"decay": 1.5}, "decay must lie in"),
    ],
)
def test_config_validation_says_what_is_wrong(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VQVAEConfig(**kw)


def test_config_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown VQVAEConfig keys \\['chanels'\\]"):
        VQVAEConfig.from_dict({"chanels": 3})
