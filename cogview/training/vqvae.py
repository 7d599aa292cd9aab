"""Train the VQ-VAE image tokenizer: typed config, seeded batches, atomic checkpoints, exact resume.

Batches are drawn with a generator seeded by (seed, step), and the learning rate is a pure
function of the step, so a resumed run replays exactly what an uninterrupted run would have
done. Dead codes are restarted every ``restart_every`` steps during the first ``restart_until``
fraction of training, then the codebook is left to settle.

A run may start from a trained tokenizer (``init_from``) and train its decoder only
(``train_parts="decoder"``): the encoder and the codebook stay frozen, so every image keeps its
codes and a transformer trained on them needs no retraining, while the reconstructions improve.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cogview.config_io import from_dict_strict
from cogview.images import make_grid, psnr, to_pil
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS, VQVAEConfig
from cogview.training.checkpoint import latest_checkpoint, load_state, save_checkpoint, set_rng_state
from cogview.training.optim import lr_at, set_lr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerTrainConfig:
    """Everything a tokenizer training run depends on; saved next to its outputs."""

    datasets: tuple[str, ...] = ("shapes", "digits")  # bundled names or folder paths (train splits)
    max_examples: int = 0  # per dataset; 0 = all
    model: dict[str, Any] = field(default_factory=lambda: VQVAE_PRESETS["small"].to_dict())
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    restart_until: float = 0.8  # fraction of steps during which dead codes are restarted
    log_every: int = 50
    checkpoint_every: int = 500
    keep_last: int = 2
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    init_from: str = ""  # a tokenizer folder to start from (its architecture must equal ``model``)
    train_parts: str = "all"  # "all", or "decoder": encoder and codebook frozen, codes unchanged

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("datasets must name at least one dataset")
        object.__setattr__(self, "datasets", tuple(self.datasets))
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.restart_until <= 1:
            raise ValueError(f"restart_until is a fraction in [0, 1], got {self.restart_until}")
        VQVAEConfig.from_dict(self.model)  # validates the architecture early
        if self.train_parts not in ("all", "decoder"):
            raise ValueError(f"train_parts must be 'all' or 'decoder', got {self.train_parts!r}")
        if self.train_parts == "decoder" and not self.init_from:
            raise ValueError("train_parts='decoder' needs init_from: a trained tokenizer whose codes to keep")

    @property
    def vqvae(self) -> VQVAEConfig:
        return VQVAEConfig.from_dict(self.model)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["datasets"] = list(self.datasets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerTrainConfig:
        d = dict(d)
        if isinstance(d.get("model"), str):
            if d["model"] not in VQVAE_PRESETS:
                raise ValueError(
                    f"unknown VQ-VAE preset {d['model']!r}; choose one of {sorted(VQVAE_PRESETS)}"
                )
            d["model"] = VQVAE_PRESETS[d["model"]].to_dict()
        return from_dict_strict(cls, d, "tokenizer training")


def load_images(
    names: Sequence[str], split: str, size: int, max_examples: int = 0, progress: bool = True
) -> torch.Tensor:
    """Render or read the images of ``split`` of each dataset into one uint8 tensor (N, 3, size, size)."""
    from cogview import datasets  # data sits above tokenizers; imported lazily to keep imports light

    arrays = []
    for name in names:
        ds = datasets.load(name, split, size=size)
        n = len(ds) if not max_examples else min(max_examples, len(ds))
        for i in tqdm(
            range(n), desc=f"loading {name}/{split}", unit="img", disable=not progress, leave=False
        ):
            arrays.append(np.asarray(ds[i].image.convert("RGB"), dtype=np.uint8))
    if not arrays:
        raise ValueError(f"no images found in {list(names)} ({split})")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The examples of ``step``: a pure function of (seed, step), so resume needs no data cursor."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n, (batch_size,), generator=g)


@torch.no_grad()
def code_statistics(model: VQVAE, images: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """PSNR of reconstructions, fraction of the codebook used, and code perplexity over ``images``."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(model.config.n_embed)
    scores = []
    for i in range(0, len(images), batch_size):
        pixels = images[i : i + batch_size].float() / 255
        codes = model.encode(pixels)
        counts += torch.bincount(codes.flatten(), minlength=model.config.n_embed).float()
        scores.append(psnr(model.decode(codes), pixels))
    model.train(was_training)
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {
        "psnr": float(torch.cat(scores).mean()),
        "usage": float((counts > 0).float().mean()),
        "perplexity": float(entropy.exp()),
    }


def _save_reconstructions(model: VQVAE, images: torch.Tensor, path: Path) -> None:
    model.eval()
    with torch.no_grad():
        pixels = images.float() / 255
        recon = model.decode(model.encode(pixels))
    tiles = []
    for orig, rec in zip(to_pil(pixels), to_pil(recon), strict=True):
        tiles += [orig, rec]
    make_grid(tiles, columns=16, scale=2).save(path)


def _initial_model(cfg: TokenizerTrainConfig) -> tuple[VQVAE, ImageTokenizer | None]:
    """A fresh VQ-VAE, or the one in ``cfg.init_from`` (same architecture required) and that tokenizer."""
    if not cfg.init_from:
        return VQVAE(cfg.vqvae), None
    parent = ImageTokenizer.from_pretrained(cfg.init_from)
    if parent.config != cfg.vqvae:
        raise ValueError(
            f"init_from={cfg.init_from} holds a tokenizer of another architecture than the config's model: "
            f"{parent.config.to_dict()} against {cfg.vqvae.to_dict()}"
        )
    return copy.deepcopy(parent.model), parent


def _train_mode(model: VQVAE, parts: str) -> VQVAE:
    """Training mode for the parts that learn; frozen parts stay in eval (no codebook EMA updates)."""
    model.train()
    if parts == "decoder":
        model.enc_b.eval()
        model.quantize_t.eval()
    return model


def _trainable(model: VQVAE, parts: str) -> list[torch.nn.Parameter]:
    keep = model.dec.parameters() if parts == "decoder" else model.parameters()
    trainable = {id(p) for p in keep}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    return [p for p in model.parameters() if p.requires_grad]


def train_tokenizer(
    cfg: TokenizerTrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) a VQ-VAE; writes checkpoints, ``metrics.jsonl``, the final model and a PNG.

    ``max_steps`` stops early (as if killed) without changing the schedule, for tests and resumes.
    Returns the final evaluation metrics.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    vq_cfg = cfg.vqvae
    torch.manual_seed(cfg.seed)
    initial, parent = _initial_model(cfg)
    model = _train_mode(initial, cfg.train_parts)
    optimizer = torch.optim.Adam(_trainable(model, cfg.train_parts), lr=cfg.lr)

    def tokenizer() -> ImageTokenizer:
        """The model as a tokenizer; decoder-only training records the parent whose codes it keeps."""
        if cfg.train_parts == "decoder" and parent is not None:
            return parent.keeping_codes(model)
        return ImageTokenizer(model)

    start = 0
    ckpt = latest_checkpoint(out) if resume else None
    if resume and ckpt is None:
        log.warning("--resume given but %s has no checkpoint; starting from scratch", out)
    if ckpt is not None:
        state = load_state(ckpt)
        if state.get("train_config") != cfg.to_dict():
            raise ValueError(
                f"{ckpt} was written with a different training config; resume with the same config"
            )
        model = _train_mode(ImageTokenizer.from_pretrained(ckpt).model, cfg.train_parts)
        optimizer = torch.optim.Adam(_trainable(model, cfg.train_parts), lr=cfg.lr)
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start = int(state["step"])
        log.info("resumed from %s at step %d", ckpt, start)
    (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    images = load_images(cfg.datasets, "train", vq_cfg.image_size, cfg.max_examples, progress)
    end = min(cfg.steps, max_steps) if max_steps else cfg.steps
    metrics_path = out / "metrics.jsonl"
    if start == 0 and metrics_path.exists():
        metrics_path.unlink()
    bar = tqdm(
        range(start, end), initial=start, total=end, desc="train tokenizer", unit="step", disable=not progress
    )
    t_last, seen = time.perf_counter(), 0
    restart_stop = int(cfg.restart_until * cfg.steps)
    every = vq_cfg.restart_every

    def save(step: int) -> None:
        save_checkpoint(
            out,
            step,
            lambda d: tokenizer().save_pretrained(d),
            {"optimizer": optimizer.state_dict(), "train_config": cfg.to_dict()},
            cfg.keep_last,
        )
        _train_mode(model, cfg.train_parts)

    for step in bar:
        lr = lr_at(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio)
        set_lr(optimizer, lr)
        pixels = images[batch_indices(len(images), cfg.batch_size, cfg.seed, step)].float() / 255
        restart = bool(every) and step < restart_stop and step % every == 0 and cfg.train_parts == "all"
        g = torch.Generator().manual_seed(cfg.seed + 7919 * step)
        result = model(pixels, generator=g, restart=restart)
        optimizer.zero_grad(set_to_none=True)
        result["loss"].backward()
        optimizer.step()
        seen += len(pixels)
        if (step + 1) % cfg.log_every == 0 or step + 1 == end:
            now = time.perf_counter()
            counts = torch.bincount(result["codes"].flatten(), minlength=vq_cfg.n_embed).float()
            p = counts[counts > 0] / counts.sum()
            row = {
                "step": step + 1,
                "loss": float(result["loss"].detach()),
                "mse": float(result["mse"].detach()),
                "psnr": float(psnr(result["pixels"], pixels).mean()),
                "usage": model.quantize_t.usage(),
                "perplexity": float((-(p * p.log()).sum()).exp()),
                "lr": lr,
                "images_per_s": seen / (now - t_last),
            }
            t_last, seen = now, 0
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            bar.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr']:.1f}", usage=f"{row['usage']:.2f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save(step + 1)
    bar.close()
    if end < cfg.steps:
        save(end)
        return {"step": end}

    tokenizer().save_pretrained(out / "model")
    result = {"step": end, "train": code_statistics(model, images)}
    for name in cfg.datasets:
        test = load_images([name], "test", vq_cfg.image_size, 0, progress=False)
        result[f"test_{Path(name).name}"] = code_statistics(model, test)
        _save_reconstructions(model, test[:64], out / f"reconstructions_{Path(name).name}.png")
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    log.info("tokenizer training done: %s", result)
    return result


__all__ = ["TokenizerTrainConfig", "code_statistics", "load_images", "train_tokenizer"]
