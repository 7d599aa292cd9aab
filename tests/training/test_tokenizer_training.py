"""Tokenizer training: exact resume, atomic checkpoints, outputs, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vqvae import VQVAE_PRESETS
from cogview.training.checkpoint import checkpoint_dirs, latest_checkpoint
from cogview.training.vqvae import TokenizerTrainConfig, train_tokenizer


def config(**kw) -> TokenizerTrainConfig:
    base = dict(
        datasets=("digits",),
        max_examples=64,
        model=VQVAE_PRESETS["tiny"].to_dict(),
        steps=8,
        batch_size=8,
        warmup=2,
        log_every=1,
        checkpoint_every=3,
        keep_last=2,
        seed=1,
    )
    base.update(kw)
    return TokenizerTrainConfig(**base)


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = config()
    full = train_tokenizer(cfg, tmp_path / "full", progress=False)
    assert full["step"] == 8
    stopped = train_tokenizer(cfg, tmp_path / "resumed", max_steps=5, progress=False)
    assert stopped == {"step": 5}
    assert latest_checkpoint(tmp_path / "resumed").name == "step_00000005"
    train_tokenizer(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert losses(tmp_path / "resumed")[-3:] == losses(tmp_path / "full")[-3:]
    a = ImageTokenizer.from_pretrained(tmp_path / "full" / "model").model.state_dict()
    b = ImageTokenizer.from_pretrained(tmp_path / "resumed" / "model").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_outputs_and_checkpoint_pruning(tmp_path: Path) -> None:
    result = train_tokenizer(config(steps=10), tmp_path, progress=False)
    assert {"psnr", "usage", "perplexity"} <= set(result["train"]) and "test_digits" in result
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000006", "step_00000009"]
    assert (tmp_path / "reconstructions_digits.png").stat().st_size > 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert {"loss", "mse", "psnr", "usage", "perplexity", "lr", "images_per_s"} <= set(rows[0])


def test_a_crash_while_saving_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config()
    train_tokenizer(cfg, tmp_path, max_steps=3, progress=False)
    good = latest_checkpoint(tmp_path)

    def crash(self, path):  # the process "dies" half-way through writing the next checkpoint
        (Path(path) / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ImageTokenizer, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(cfg, tmp_path, resume=True, max_steps=6, progress=False)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == good
    ImageTokenizer.from_pretrained(good)  # still loads


def test_resume_with_another_config_is_refused(tmp_path: Path) -> None:
    train_tokenizer(config(), tmp_path, max_steps=3, progress=False)
    with pytest.raises(ValueError, match="different training config"):
        train_tokenizer(config(lr=1e-3), tmp_path, resume=True, progress=False)


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"unknown tokenizer training keys \['stepz'\]"):
        TokenizerTrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="unknown VQ-VAE preset 'huge'"):
        TokenizerTrainConfig.from_dict({"model": "huge"})
    with pytest.raises(ValueError, match="batch_size must be positive"):
        TokenizerTrainConfig(batch_size=0)


def test_decoder_only_training_keeps_every_code_and_resumes_exactly(tmp_path: Path) -> None:
    train_tokenizer(config(), tmp_path / "base", progress=False)
    base = tmp_path / "base" / "model"
    cfg = config(init_from=str(base), train_parts="decoder", steps=6, lr=5e-3)
    train_tokenizer(cfg, tmp_path / "dec", progress=False)
    before = ImageTokenizer.from_pretrained(base)
    after = ImageTokenizer.from_pretrained(tmp_path / "dec" / "model")
    a, b = before.model.state_dict(), after.model.state_dict()
    frozen = [k for k in a if not k.startswith("dec.")]
    assert frozen and all(torch.equal(a[k], b[k]) for k in frozen)  # encoder, codebook and its EMA state
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("dec."))
    images = torch.rand(6, 3, 32, 32)
    assert torch.equal(before.model.encode(images), after.model.encode(images))
    # It says whose codes it keeps, and data or models made with the base stay valid with it.
    assert after.fingerprint != before.fingerprint and after.fingerprints == (after.fingerprint, before.fingerprint)
    assert after.codes_fingerprint == before.codes_fingerprint
    tampered = ImageTokenizer.from_pretrained(tmp_path / "dec" / "model")
    with torch.no_grad():
        tampered.model.enc_b.blocks[0].weight.add_(1e-3)  # another encoder: the claim no longer holds
    assert tampered.fingerprints == (tampered.fingerprint,)
    # Exact resume holds for the decoder-only run too.
    train_tokenizer(cfg, tmp_path / "dec2", max_steps=4, progress=False)
    train_tokenizer(cfg, tmp_path / "dec2", resume=True, progress=False)
    c = ImageTokenizer.from_pretrained(tmp_path / "dec2" / "model").model.state_dict()
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_decoder_only_training_needs_a_tokenizer_of_the_same_architecture(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs init_from"):
        config(train_parts="decoder")
    with pytest.raises(ValueError, match="'all' or 'decoder'"):
        config(train_parts="encoder")
    train_tokenizer(config(steps=2), tmp_path / "base", progress=False)
    other = {**VQVAE_PRESETS["tiny"].to_dict(), "n_embed": VQVAE_PRESETS["tiny"].n_embed * 2}
    with pytest.raises(ValueError, match="another architecture"):
        train_tokenizer(config(model=other, init_from=str(tmp_path / "base" / "model")), tmp_path / "x", progress=False)
