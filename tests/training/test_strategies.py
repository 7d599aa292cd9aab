"""Building the replica of a strategy: one class per strategy, the batch check, recomputation."""

from __future__ import annotations

import pytest
import torch

from cogview.model import CogViewTransformer
from cogview.training.config import STRATEGIES, TrainConfig
from cogview.training.distributed import DistEnv
from cogview.training.parallel import Local
from cogview.training.strategies import REPLICAS, build_replica, checkpoint_activations

CPU = torch.device("cpu")


def tiny_model() -> CogViewTransformer:
    torch.manual_seed(0)
    cfg = TrainConfig(data="d", model={"preset": "tiny", "dim": 32, "n_heads": 2, "max_seq_len": 16})
    return CogViewTransformer(cfg.transformer_config())


def test_every_strategy_has_a_replica() -> None:
    assert set(REPLICAS) == set(STRATEGIES)
    assert all(issubclass(kind, Local) for kind in REPLICAS.values())


def test_the_global_batch_must_split_over_the_ranks() -> None:
    cfg = TrainConfig(data="d", model="tiny", strategy="ddp", batch_size=4)
    with pytest.raises(ValueError, match="set batch_size to a multiple of 3"):
        build_replica(torch.nn.Linear(2, 2), cfg, DistEnv("ddp", 0, 3, 0, CPU))  # refused before wrapping


def test_strategy_none_trains_the_model_itself() -> None:
    model = tiny_model()
    seen = []
    rep = build_replica(
        model, TrainConfig(data="d", model="tiny"), DistEnv("none", 0, 1, 0, CPU), seen.append
    )
    assert type(rep) is Local and rep.model is model and seen == [model]
    assert isinstance(rep.optimizer, torch.optim.AdamW)


def test_checkpoint_activations_keeps_names_outputs_and_gradients() -> None:
    plain, recomputed = tiny_model(), tiny_model()
    checkpoint_activations(recomputed)
    assert list(recomputed.state_dict()) == list(plain.state_dict())  # checkpoints stay compatible
    tokens = torch.randint(0, plain.config.vocab_size, (2, 8))
    positions = torch.arange(8).expand(2, 8)
    for model in (plain, recomputed):
        model.train(False)  # no dropout: the two forwards must agree exactly
        model(tokens, positions).float().pow(2).mean().backward()
    for (name, p), q in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
