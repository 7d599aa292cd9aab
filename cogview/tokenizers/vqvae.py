"""The VQ-VAE image tokenizer network: conv encoder, EMA vector quantiser, conv decoder.

CogView (SPEC.md 2.2) tokenises images with a VQ-VAE whose codebook is trained by exponential
moving averages rather than by gradients. :class:`VQVAEConfig` can express the released
``vqvae_hard_biggerset_011.pt`` exactly (three stride-2 4x4 convs, 512 channels, no residual
blocks, 8192 x 256 codebook stored as ``embed`` [dim, K], its normalisation constants) and
our small defaults (residual blocks, fewer channels and codes). Beyond the original, unused
codes are restarted from encoder outputs every few steps so that the codebook is actually used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cogview.config_io import from_dict_strict

ORIGINAL_MEAN = (0.79093, 0.76271, 0.75340)
ORIGINAL_STD = (0.30379, 0.32279, 0.32800)


@dataclass(frozen=True)
class VQVAEConfig:
    """Architecture and codebook hyper-parameters; travels with the weights as ``config.json``."""

    image_size: int = 32  # the resolution the tokenizer is trained and used at
    channels: int = 128  # conv width
    n_down: int = 2  # stride-2 4x4 convs: codes are image_size / 2**n_down per side
    n_res_blocks: int = 2  # 0 reproduces the original's plain conv stack
    res_channels: int = 64
    embed_dim: int = 64  # codebook vector size
    n_embed: int = 512  # codebook size K
    decay: float = 0.99  # EMA decay of the codebook statistics
    eps: float = 1e-5  # Laplace smoothing of cluster sizes
    commitment: float = 0.25  # weight of ||z - sg[q]||^2
    restart_every: int = 10  # steps between dead-code restarts (0 disables them)
    restart_threshold: float = 0.05  # EMA usage (codes/step) under which a code counts as dead
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    clamp_output: bool = True  # the original does not clamp decoded pixels

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "embed_dim", "n_embed"):
            if getattr(self, name) <= 0:
                raise ValueError(f"VQVAEConfig.{name} must be positive, got {getattr(self, name)}")
        if self.n_down < 1:
            raise ValueError(f"VQVAEConfig.n_down must be >= 1, got {self.n_down}")
        if self.image_size % (2**self.n_down):
            raise ValueError(
                f"image_size={self.image_size} is not divisible by 2**n_down={2**self.n_down}; "
                "choose an image size that the encoder can halve n_down times"
            )
        if self.n_res_blocks < 0 or self.res_channels <= 0:
            raise ValueError("n_res_blocks must be >= 0 and res_channels > 0")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {self.decay}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std must be three numbers each, std positive")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def grid_size(self) -> int:
        """Codes per side of the code grid."""
        return self.image_size // 2**self.n_down

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VQVAEConfig:
        return from_dict_strict(cls, d)


def original_config() -> VQVAEConfig:
    """The released CogView tokenizer (``vqvae_hard_biggerset_011.pt``), SPEC.md 2.2."""
    return VQVAEConfig(
        image_size=256,
        channels=512,
        n_down=3,
        n_res_blocks=0,
        embed_dim=256,
        n_embed=8192,
        restart_every=0,
        mean=ORIGINAL_MEAN,
        std=ORIGINAL_STD,
        clamp_output=False,
    )


VQVAE_PRESETS: dict[str, VQVAEConfig] = {
    "small": VQVAEConfig(),
    "original": original_config(),
    "tiny": VQVAEConfig(channels=16, n_res_blocks=1, res_channels=8, embed_dim=8, n_embed=32),
}


class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), the VQ-VAE-2 residual unit."""

    def __init__(self, channels: int, res_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, res_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(res_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Encoder(nn.Module):
    """[conv4x4/2, ReLU] * n_down, residual blocks, 1x1 conv to the codebook dimension.

    With ``n_res_blocks=0`` and ``n_down=3`` the ``blocks`` indices 0, 2, 4, 6 match the
    original's ``enc_b.blocks`` keys.
    """

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch_in = 3
        for _ in range(cfg.n_down):
            layers += [nn.Conv2d(ch_in, cfg.channels, 4, stride=2, padding=1), nn.ReLU()]
            ch_in = cfg.channels
        if cfg.n_res_blocks:
            layers += [ResBlock(cfg.channels, cfg.res_channels) for _ in range(cfg.n_res_blocks)]
            layers.append(nn.ReLU())
        layers.append(nn.Conv2d(cfg.channels, cfg.embed_dim, 1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)  # (B, D, h, w)


class Decoder(nn.Module):
    """Mirror of :class:`Encoder` with transposed convs; original keys ``dec.blocks.{0,2,4,6}``."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch_in = cfg.embed_dim
        if cfg.n_res_blocks:
            layers.append(nn.Conv2d(cfg.embed_dim, cfg.channels, 3, padding=1))
            layers += [ResBlock(cfg.channels, cfg.res_channels) for _ in range(cfg.n_res_blocks)]
            layers.append(nn.ReLU())
            ch_in = cfg.channels
        for _ in range(cfg.n_down):
            layers += [nn.ConvTranspose2d(ch_in, cfg.channels, 4, stride=2, padding=1), nn.ReLU()]
            ch_in = cfg.channels
        layers.append(nn.Conv2d(cfg.channels, 3, 1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.blocks(q)  # (B, 3, H, W)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook with EMA updates (CogView, VQ-VAE-2) and dead-code restarts.

    Buffers keep the original's layout: ``embed`` [D, K], ``cluster_size`` [K], ``embed_avg`` [D, K].
    The codebook changes only in training mode, inside :meth:`forward`.
    """

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.dim, self.n_embed = cfg.embed_dim, cfg.n_embed
        self.decay, self.eps = cfg.decay, cfg.eps
        self.restart_threshold = cfg.restart_threshold
        embed = torch.empty(cfg.embed_dim, cfg.n_embed)
        nn.init.xavier_uniform_(embed, gain=nn.init.calculate_gain("tanh"))
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.ones(cfg.n_embed))
        self.register_buffer("embed_avg", embed.clone())

    def codes_for(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` (N, D)."""
        dist = (
            flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed + self.embed.pow(2).sum(0, keepdim=True)
        )
        return dist.argmin(1)  # (N,)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> vectors (B, D, h, w)."""
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.n_embed):
            raise ValueError(
                f"codes must lie in [0, {self.n_embed}), got [{int(codes.min())}, {int(codes.max())}]"
            )
        return F.embedding(codes, self.embed.t()).permute(0, 3, 1, 2)

    def forward(
        self, z: torch.Tensor, generator: torch.Generator | None = None, restart: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise ``z`` (B, D, h, w); returns (straight-through q, codes (B, h, w), commitment loss).

        In training mode the EMA statistics are updated and, with ``restart``, codes whose usage
        fell under the threshold are re-seeded from this batch's encoder outputs. The caller
        (the training loop) decides when to restart, so that resuming keeps the same cadence.
        """
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (N, D)
        codes = self.codes_for(flat.detach())
        if self.training:
            self._ema_update(flat.detach(), codes)
            if restart:
                self._restart_dead_codes(flat.detach(), generator)
        q = F.embedding(codes, self.embed.t()).view(b, h, w, d).permute(0, 3, 1, 2)
        commit = F.mse_loss(z, q.detach())
        q = z + (q - z).detach()  # straight-through: gradients reach the encoder
        return q, codes.view(b, h, w), commit

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        onehot = F.one_hot(codes, self.n_embed).to(flat.dtype)  # (N, K)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(flat.t() @ onehot, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.n_embed * self.eps) * n
        self.embed.copy_(self.embed_avg / smoothed.unsqueeze(0))

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor, generator: torch.Generator | None) -> None:
        dead = (self.cluster_size < self.restart_threshold).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator, device=flat.device)
        fresh = flat[pick].t()  # (D, n_dead)
        self.embed[:, dead] = fresh
        self.embed_avg[:, dead] = fresh
        self.cluster_size[dead] = 1.0

    def usage(self) -> float:
        """Fraction of codes whose EMA usage is above the dead threshold."""
        return float((self.cluster_size >= self.restart_threshold).float().mean())


class VQVAE(nn.Module):
    """Encoder + quantiser + decoder working on normalised image tensors."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.config = cfg
        self.enc_b = Encoder(cfg)  # names follow the original checkpoint (SPEC.md 2.2)
        self.quantize_t = VectorQuantizer(cfg)
        self.dec = Decoder(cfg)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> network input."""
        return (pixels - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Network output -> pixels (clamped to [0, 1] unless configured like the original)."""
        pixels = x * self.std + self.mean
        return pixels.clamp(0, 1) if self.config.clamp_output else pixels

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [0, 1] -> codes (B, h, w) int64, without touching the codebook."""
        z = self.enc_b(self.normalize(pixels))
        b, d, h, w = z.shape
        return self.quantize_t.codes_for(z.permute(0, 2, 3, 1).reshape(-1, d)).view(b, h, w)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> pixels (B, 3, H, W)."""
        return self.denormalize(self.dec(self.quantize_t.lookup(codes)))

    def forward(
        self, pixels: torch.Tensor, generator: torch.Generator | None = None, restart: bool = False
    ) -> dict[str, torch.Tensor]:
        """Training pass: reconstruction (normalised space), codes and losses."""
        x = self.normalize(pixels)
        q, codes, commit = self.quantize_t(self.enc_b(x), generator, restart)
        recon = self.dec(q)
        mse = F.mse_loss(recon, x)
        return {
            "loss": mse + self.config.commitment * commit,
            "mse": mse,
            "commitment": commit,
            "codes": codes,
            "pixels": self.denormalize(recon.detach()),
        }


__all__ = ["VQVAE", "VQVAEConfig", "VQVAE_PRESETS", "VectorQuantizer", "original_config"]
