"""Fixtures: a tiny released-CogView file set (DeepSpeed folder, VQ-VAE pickle, SentencePiece model)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from original_files import original_transformer_state, original_vqvae_state, write_checkpoint_dir

from cogview.model import TransformerConfig
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vocab import Vocabulary
from cogview.tokenizers.vqvae import VQVAEConfig, original_config

REPO_ROOT = Path(__file__).resolve().parents[2]
ORIGINAL_TOKENIZER = REPO_ROOT.parent / "shared" / "reference" / "cogview-original" / "cog-pretrain.model"
CORPUS = ["一只可爱的猫", "一个漂亮的女孩", "a red circle on a blue background", "手写数字7", "a digit 3"] * 4


def tiny_vqvae_config(n_embed: int = 32, image_size: int = 32) -> VQVAEConfig:
    """The original VQ-VAE layout (3 stride-2 convs, no residual blocks, its constants), tiny widths."""
    return dataclasses.replace(
        original_config(), image_size=image_size, channels=16, embed_dim=8, n_embed=n_embed
    )


def tiny_transformer_config(
    vocab_size: int, *, dim: int = 64, n_layers: int = 2, max_seq_len: int = 64
) -> TransformerConfig:
    """The cogview-4b numerics (Sandwich-LN, tied head, original LN scaling) at 2 layers x 64."""
    return TransformerConfig(
        vocab_size=vocab_size,
        dim=dim,
        n_layers=n_layers,
        n_heads=4,
        max_seq_len=max_seq_len,
        ln_input_scaling="original",
    )


@dataclass
class OriginalFiles:
    root: Path
    checkpoint: Path  # the folder with latest_checkpointed_iteration.txt
    vqvae: Path
    text_tokenizer: Path
    config: TransformerConfig
    vqvae_config: VQVAEConfig
    module: dict[str, torch.Tensor]
    vqvae_state: dict[str, torch.Tensor]

    @property
    def model_file(self) -> Path:
        return self.checkpoint / "142000" / "mp_rank_00_model_states.pt"

    def config_files(self) -> tuple[Path, Path]:
        """JSON files for ``--config`` and ``--vqvae-config``."""
        t, v = self.root / "transformer.json", self.root / "vqvae.json"
        t.write_text(json.dumps(self.config.to_dict()))
        v.write_text(json.dumps(self.vqvae_config.to_dict()))
        return t, v


@pytest.fixture(scope="session")
def tiny_text_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spm") / "tiny.model"
    path.write_bytes(TextTokenizer.train(CORPUS, None, vocab_size=300).model_bytes)
    return path


def make_original_files(
    root: Path,
    text_tokenizer: Path,
    *,
    sat: bool = False,
    n_embed: int = 32,
    image_size: int = 32,
    **shape: int,
) -> OriginalFiles:
    """Released-layout files; ``shape`` (dim, n_layers, max_seq_len) resizes the transformer, and
    ``image_size=256`` gives the 32x32 code grid of the released super-resolution."""
    text_size = TextTokenizer.from_pretrained(text_tokenizer).vocab_size
    vocab = Vocabulary(image_size=n_embed, text_size=text_size, extra_tokens=())
    config = tiny_transformer_config(vocab.size, **shape)
    vq_config = tiny_vqvae_config(n_embed, image_size)
    module = original_transformer_state(vocab.size, config.dim, config.n_layers, config.max_seq_len, sat=sat)
    write_checkpoint_dir(root / "cogview-base", module, with_args=sat)
    vq_state = original_vqvae_state(vq_config.channels, vq_config.embed_dim, n_embed)
    (root / "vqvae").mkdir()
    torch.save(vq_state, root / "vqvae" / "vqvae_hard_biggerset_011.pt")
    return OriginalFiles(
        root, root / "cogview-base", root / "vqvae" / "vqvae_hard_biggerset_011.pt", text_tokenizer,
        config, vq_config, module, vq_state,
    )  # fmt: skip


@pytest.fixture
def original(tmp_path: Path, tiny_text_tokenizer: Path) -> OriginalFiles:
    return make_original_files(tmp_path, tiny_text_tokenizer)


@pytest.fixture
def original_sat(tmp_path: Path, tiny_text_tokenizer: Path) -> OriginalFiles:
    return make_original_files(tmp_path, tiny_text_tokenizer, sat=True)
