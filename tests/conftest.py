"""Shared test settings and the tiny random model folder that CLI and server tests load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from small_parts import small_text_tokenizer

from cogview.model import PRESETS, CogViewTransformer
from cogview.pipeline import CogViewPipeline
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vocab import default_vocab
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS


@pytest.fixture(autouse=True)
def one_thread():
    # The test machines share 2 cores; OpenMP threads waiting on each other there make tiny ops
    # up to 50x slower. Results do not depend on the thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder with tiny random transformers for all three jobs (super-resolution window 4)."""
    torch.manual_seed(0)
    text, image = small_text_tokenizer(), ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"]).eval())
    vocab = default_vocab(image, text)
    config = dataclasses.replace(PRESETS["tiny"], vocab_size=vocab.size)
    models = {
        job: CogViewTransformer(config) for job in ("text_to_image", "image_to_text", "super_resolution")
    }
    folder = tmp_path_factory.mktemp("models") / "three"
    CogViewPipeline(None, text, image, vocab, job_models=models, sr_window=4).save_pretrained(folder)
    return folder
