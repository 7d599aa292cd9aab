"""``init_from``: a run may start from another run's model folder (fine-tuning, longer schedules)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from small_parts import small_text_tokenizer

from cogview.data.prepare import prepare
from cogview.data.sequences import sr_cells
from cogview.data.shards import TokenShards
from cogview.model import CogViewTransformer
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS
from cogview.training.batches import make_batch
from cogview.training.config import TrainConfig
from cogview.training.loop import train


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("shards") / "shapes"
    image = ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"]))
    prepare(
        "shapes",
        out,
        image_tokenizer=image,
        text_tokenizer=small_text_tokenizer(),
        max_examples=16,
        text_budget=8,
        progress=False,
    )
    return out


def config(shards: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(shards),
        model={"preset": "tiny", "max_seq_len": 80},
        steps=3,
        batch_size=4,
        warmup=1,
        log_every=1,
        checkpoint_every=10,
        device="cpu",
        threads=1,
    )
    return TrainConfig(**{**base, **kw})


def test_a_run_starts_from_the_weights_of_init_from(shards: Path, tmp_path: Path) -> None:
    train(config(shards), tmp_path / "first", progress=False)
    first = CogViewTransformer.from_pretrained(tmp_path / "first" / "model")
    seen = {}
    train(
        config(shards, init_from=str(tmp_path / "first" / "model"), seed=5),
        tmp_path / "second",
        progress=False,
        on_model=lambda m: seen.update({k: v.clone() for k, v in m.state_dict().items()}),
    )
    assert all(torch.equal(seen[k], v) for k, v in first.state_dict().items())


def test_init_from_with_another_architecture_is_refused(shards: Path, tmp_path: Path) -> None:
    train(config(shards), tmp_path / "first", progress=False)
    with pytest.raises(ValueError, match="set model to the same architecture"):
        train(
            config(
                shards,
                model={"preset": "tiny", "max_seq_len": 96},
                init_from=str(tmp_path / "first" / "model"),
            ),
            tmp_path / "x",
            progress=False,
        )


@pytest.fixture(scope="module")
def sr_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("sr") / "shapes-sr"
    prepare(
        "shapes",
        out,
        image_tokenizer=ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"])),
        text_tokenizer=small_text_tokenizer(),
        tasks=("super_resolution",),
        sr_window=4,
        max_examples=8,
        text_budget=8,
        progress=False,
    )
    return out


def test_a_run_may_add_a_cell_table_and_trains_it(sr_shards: Path, tmp_path: Path) -> None:
    """Super-resolution fine-tuning: every weight but the new cell inputs starts from init_from."""
    model = {"preset": "tiny", "max_seq_len": 96}
    train(config(sr_shards, model=model), tmp_path / "first", progress=False)
    first = CogViewTransformer.from_pretrained(tmp_path / "first" / "model")
    seen = {}
    cells = {"cell_embeddings": 17, "cell_sources": True}
    train(
        config(sr_shards, model={**model, **cells}, init_from=str(tmp_path / "first" / "model")),
        tmp_path / "second",
        progress=False,
        on_model=lambda m: seen.update({k: v.clone() for k, v in m.state_dict().items()}),
    )
    assert all(torch.equal(seen[k], v) for k, v in first.state_dict().items())
    table = CogViewTransformer.from_pretrained(tmp_path / "second" / "model").cell_embeddings.weight
    assert torch.count_nonzero(table[0]) == 0  # "no cell" stays zero
    assert not torch.allclose(table[1:], seen["cell_embeddings.weight"][1:])  # the cells trained
    assert torch.count_nonzero(seen["cell_sources.weight"]) == 0  # the source map starts at zero
    trained = CogViewTransformer.from_pretrained(tmp_path / "second" / "model").cell_sources.weight
    assert torch.count_nonzero(trained) > 0


def test_sr_input_noise_corrupts_only_2x_inputs_and_is_seeded(sr_shards: Path) -> None:
    data = TokenShards.open(sr_shards)
    tokens = torch.from_numpy(data.rows(np.arange(8)))
    clean = make_batch(tokens, data.vocab)
    noisy = make_batch(tokens, data.vocab, noise=(0.5, torch.Generator().manual_seed(1)))
    again = make_batch(tokens, data.vocab, noise=(0.5, torch.Generator().manual_seed(1)))
    assert torch.equal(noisy.inputs, again.inputs)
    assert torch.equal(noisy.targets, clean.targets) and torch.equal(noisy.cells, clean.cells)
    changed = noisy.inputs != clean.inputs
    boi2 = data.vocab.token_id("[BOI2]")
    high = (sr_cells(tokens, data.vocab)[:, :-1] > 0) & ((clean.inputs == boi2).cumsum(1) > 0)
    assert not changed[~high].any()  # text, layout tokens and the low-res crop are untouched
    assert 0.4 < changed[high].float().mean() < 0.55  # ~rate, less the draws that hit the true code
    assert data.vocab.is_image(noisy.inputs[changed]).all()


def test_batches_for_a_model_without_cell_inputs_skip_them_and_keep_the_rest(sr_shards: Path) -> None:
    data = TokenShards.open(sr_shards)
    tokens = torch.from_numpy(data.rows(np.arange(8)))
    full = make_batch(tokens, data.vocab)
    plain = make_batch(tokens, data.vocab, cell_inputs=False)
    assert (full.cells > 0).any() and (full.sources >= 0).any()  # SR rows have cell inputs
    assert not plain.cells.any() and (plain.sources == -1).all() and plain.sources.shape == full.sources.shape
    for name in ("inputs", "targets", "positions", "loss_mask", "text_mask"):
        assert torch.equal(getattr(plain, name), getattr(full, name)), name
    # Input noise still finds the 2x codes when the model itself takes no cell inputs.
    noise = (0.5, torch.Generator().manual_seed(1))
    noisy = make_batch(tokens, data.vocab, noise=noise, cell_inputs=False)
    assert not torch.equal(noisy.inputs, plain.inputs)
