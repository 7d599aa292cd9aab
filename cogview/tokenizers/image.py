"""ImageTokenizer: PIL images or pixel tensors <-> VQ-VAE code grids, saved as a model folder.

This is the public face of the VQ-VAE (``cogview.ImageTokenizer``): it owns preprocessing
(resize the shorter side, center-crop, as CogView), inference mode, and strict loading of
``config.json`` + ``model.safetensors``. Code ids here are raw codebook indices ``[0, K)``;
offsetting them into the unified vocabulary is :mod:`cogview.tokenizers.vocab`'s job.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cogview.images import check_pixels, to_pil, to_tensor
from cogview.serialization import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_into,
    read_json,
    save_weights,
    write_json,
)
from cogview.tokenizers.vqvae import VQVAE, VQVAEConfig

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "assets" / "default" / "image_tokenizer"


class ImageTokenizer:
    """Encode images to codes (B, h, w) and decode codes back to images with a VQ-VAE.

    ``codes_of`` records the tokenizer this one keeps the codes of, when only its decoder was
    trained further (``train_parts="decoder"``): ``{"fingerprints": [...], "codes_fingerprint":
    ...}``. Data and models made with those tokenizers stay valid with this one, and
    :attr:`fingerprints` says so as long as the encoder and codebook still hash to
    ``codes_fingerprint``.
    """

    def __init__(self, model: VQVAE, codes_of: Mapping[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.codes_of = dict(codes_of) if codes_of else None

    @property
    def config(self) -> VQVAEConfig:
        return self.model.config

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    @property
    def codebook_size(self) -> int:
        return self.config.n_embed

    @property
    def device(self) -> torch.device:
        return self.model.quantize_t.embed.device

    def to(self, device: torch.device | str) -> ImageTokenizer:
        self.model.to(device)
        return self

    def pixels(self, images: Sequence[Image.Image] | torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Images -> the encoder's input (B, 3, size, size) on this tokenizer's device: the one
        resize/crop every user of the encoder shares (``encode``, FID features)."""
        size = size or self.image_size
        if size % (2**self.config.n_down):
            raise ValueError(f"size={size} must be a multiple of {2**self.config.n_down} for this tokenizer")
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, torch.Tensor):
            pixels = check_pixels(images).float()
            if pixels.shape[-2:] != (size, size):
                pixels = torch.nn.functional.interpolate(
                    pixels, size=(size, size), mode="bicubic", antialias=True
                ).clamp(0, 1)
        else:
            pixels = to_tensor(list(images), size)
        return pixels.to(self.device)

    @torch.inference_mode()
    def encode(self, images: Sequence[Image.Image] | torch.Tensor, size: int | None = None) -> torch.Tensor:
        """PIL images (any size: resized and center-cropped) or pixels (B, 3, H, W) in [0, 1] -> codes (B, h, w).

        ``size`` encodes at another resolution than the training one (the network is fully
        convolutional): super-resolution uses it to tokenise 2x images into 2x code grids.
        """
        return self.model.encode(self.pixels(images, size))

    @torch.inference_mode()
    def decode_pixels(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) or (h, w) -> pixels (B, 3, H, W)."""
        codes = torch.as_tensor(codes, dtype=torch.long, device=self.device)
        if codes.ndim == 2:
            codes = codes.unsqueeze(0)
        if codes.ndim != 3:
            raise ValueError(f"codes must have shape (B, h, w), got {tuple(codes.shape)}")
        return self.model.decode(codes)

    def decode(self, codes: torch.Tensor) -> list[Image.Image]:
        """Codes (B, h, w) -> PIL images."""
        return to_pil(self.decode_pixels(codes))

    @property
    def fingerprint(self) -> str:
        """Short hash of config and weights: token shards record it to refuse other tokenizers.

        Computed on each access (the weights may change in training), as a property like
        :attr:`TextTokenizer.fingerprint <cogview.tokenizers.text.TextTokenizer.fingerprint>`.
        """
        return self._hash(lambda name: True)

    @property
    def codes_fingerprint(self) -> str:
        """Short hash of what decides the codes: the config, the encoder and the codebook."""
        return self._hash(lambda name: name.startswith("enc_b.") or name == "quantize_t.embed")

    def _hash(self, include: Callable[[str], bool]) -> str:
        h = hashlib.sha256(repr(sorted(self.config.to_dict().items())).encode())
        for name, t in sorted(self.model.state_dict().items()):
            if include(name):
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """The fingerprints whose codes this tokenizer gives: its own, then those of ``codes_of``
        when its encoder and codebook are still the ones recorded there."""
        if self.codes_of and self.codes_of.get("codes_fingerprint") == self.codes_fingerprint:
            return (self.fingerprint, *self.codes_of.get("fingerprints", ()))
        return (self.fingerprint,)

    def keeping_codes(self, model: VQVAE) -> ImageTokenizer:
        """``model`` (this tokenizer with another decoder) as a tokenizer that keeps these codes."""
        return ImageTokenizer(model, {"fingerprints": list(self.fingerprints), "codes_fingerprint": self.codes_fingerprint})

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` (atomically) into the folder ``path``."""
        path = Path(path)
        save_weights(path / WEIGHTS_NAME, self.model.state_dict(), metadata={"format": "cogview-vqvae"})
        extra = {} if self.codes_of is None else {"codes_of": self.codes_of}
        write_json(path / CONFIG_NAME, {"model_type": "vqvae", **self.config.to_dict(), **extra})

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike | None = None, device: torch.device | str = "cpu"
    ) -> ImageTokenizer:
        """Load a tokenizer folder; ``None`` loads the default shipped with the package."""
        path = Path(path) if path is not None else DEFAULT_PATH
        if not path.is_dir():
            raise CheckpointError(f"image tokenizer folder {path} does not exist")
        raw = read_json(path / CONFIG_NAME)
        if raw.pop("model_type", "vqvae") != "vqvae":
            raise CheckpointError(f"{path / CONFIG_NAME} does not describe a VQ-VAE image tokenizer")
        codes_of = raw.pop("codes_of", None)
        if codes_of is not None and not (
            isinstance(codes_of, dict)
            and isinstance(codes_of.get("codes_fingerprint"), str)
            and isinstance(codes_of.get("fingerprints"), list)
            and all(isinstance(f, str) for f in codes_of["fingerprints"])
        ):
            raise CheckpointError(f"{path / CONFIG_NAME}: codes_of must hold fingerprints (a list) and codes_fingerprint")
        try:
            cfg = VQVAEConfig.from_dict(raw)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path / CONFIG_NAME} is not a valid VQ-VAE config: {e}") from e
        with torch.device("meta"):
            model = VQVAE(cfg)
        load_into(model, path / WEIGHTS_NAME)
        # Non-persistent buffers (normalisation constants) are rebuilt off the meta device.
        model.mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
        model.std = torch.tensor(cfg.std).view(1, 3, 1, 1)
        return cls(model.to(device), codes_of)
