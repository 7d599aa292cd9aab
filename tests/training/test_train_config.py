"""TrainConfig: validated on load, with messages that name the key and what it must be."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cogview.model import PRESETS
from cogview.training.config import ConfigError, TrainConfig, apply_overrides

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_round_trip_and_model_normalisation() -> None:
    cfg = TrainConfig(data="shards", model="tiny")
    assert cfg.model == {"preset": "tiny"} and cfg.betas == (0.9, 0.95)
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bacth_size": 4}, "unknown training config key(s) ['bacth_size']; valid keys are"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": "8"}, "batch_size must be an integer, got '8' (str)"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"lr": True}, "lr must be a number, got True"),
        ({"betas": [0.9]}, "betas must be two numbers in [0, 1)"),
        ({"caption_dropout": 1.5}, "caption_dropout must be a probability in [0, 1]"),
        ({"sr_input_noise": 1.0}, "sr_input_noise must be a fraction in [0, 1)"),
        ({"model": {"preset": "tiny", "cell_sources": 1}}, "cell_sources=1 must be true or false"),
        ({"precision": "fp8"}, "precision must be one of ['fp32', 'bf16', 'fp16'], got 'fp8'"),
        ({"device": "tpu"}, "device must be one of"),
        ({"data": ""}, "data must name a token-shard folder"),
        ({"model": "huge"}, "model.preset='huge' is not a preset; choose one of"),
        ({"model": 3}, "model must be a preset name"),
        ({"model": {"preset": "tiny", "dim": 65}}, "model: dim=65 is not divisible by n_heads=4"),
        ({"model": {"preset": "tiny", "depth": 3}}, "model: unknown TransformerConfig field(s) ['depth']"),
        ({"grad_clip": -1}, "grad_clip must be a number >= 0"),
        ({"strategy": "horovod"}, "strategy must be one of ['none', 'ddp', 'fsdp', 'deepspeed']"),
        ({"strategy": "fsdp", "zero1": True}, "zero1 shards the optimizer of strategy ddp"),
        ({"zero1": "yes"}, "zero1 must be true or false, got 'yes'"),
        ({"activation_checkpointing": 1}, "activation_checkpointing must be true or false"),
        ({"strategy": "deepspeed"}, "strategy deepspeed needs deepspeed_config"),
        ({"deepspeed_config": "ds.json"}, "deepspeed_config needs strategy deepspeed"),
    ],
)
def test_bad_values_are_refused_with_a_message(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({"data": "shards", **changes})
    assert message in str(e.value)


def test_model_is_completed_from_the_shards() -> None:
    cfg = TrainConfig(data="d", model={"preset": "small", "dropout": 0.0})
    model = cfg.transformer_config(vocab_size=1152, seq_len=293)
    assert model.vocab_size == 1152 and model.dropout == 0.0 and model.dim == PRESETS["small"].dim
    with pytest.raises(ConfigError, match="set model.max_seq_len to at least 293"):
        TrainConfig(data="d", model="tiny").transformer_config(1152, 293)
    with pytest.raises(ConfigError, match="smaller than the shards' vocabulary"):
        TrainConfig(data="d", model={"preset": "tiny", "vocab_size": 512}).transformer_config(1152, 64)
    full = TrainConfig(data="d", model={"dim": 32, "n_heads": 2, "n_layers": 1, "max_seq_len": 64})
    assert full.transformer_config(256, 64).n_layers == 1


def test_overrides_set_top_level_and_model_fields() -> None:
    raw = apply_overrides(
        {"data": "d", "model": "tiny"}, {"lr": 1e-3, "model.dropout": 0.1, "model.max_seq_len": 96}
    )
    cfg = TrainConfig.from_dict(raw)
    assert cfg.lr == 1e-3 and cfg.model == {"preset": "tiny", "dropout": 0.1, "max_seq_len": 96}
    with pytest.raises(ConfigError, match="only model fields"):
        apply_overrides({}, {"optim.lr": 1.0})


def test_resume_may_change_only_harmless_keys() -> None:
    cfg = TrainConfig(data="a", model="tiny")
    stored = cfg.to_dict()
    assert (
        TrainConfig(data="b", model="tiny", keep_last=9, checkpoint_every=7).resume_mismatches(stored) == []
    )
    assert TrainConfig(data="a", model="tiny", lr=1.0, seed=3).resume_mismatches(stored) == ["lr", "seed"]
    # A key added after a checkpoint was written compares with its default.
    older = {k: v for k, v in stored.items() if k != "sr_input_noise"}
    assert cfg.resume_mismatches(older) == []
    assert TrainConfig(data="a", model="tiny", sr_input_noise=0.2).resume_mismatches(older) == [
        "sr_input_noise"
    ]


@pytest.mark.parametrize("name", ["tiny", "small", "cogview-4b"])
def test_shipped_configs_are_valid(name: str) -> None:
    cfg = TrainConfig.from_dict(json.loads((CONFIGS / f"{name}.json").read_text()))
    model = cfg.transformer_config(vocab_size=1152, seq_len=292)  # 16x16 codes, 576 text pieces
    assert model.max_seq_len >= 292
    if name == "small":
        assert cfg.model["preset"] == "small" and cfg.betas == (0.9, 0.95) and cfg.min_lr_ratio == 0.1
    if name == "cogview-4b":  # SPEC 4.3: 6,144 sequences per step, lr 3e-4 after 2% warmup
        assert cfg.sequences_per_step == 6144 and cfg.warmup == cfg.steps // 50 and cfg.strategy == "fsdp"


def test_a_run_may_resume_under_another_strategy() -> None:
    """Checkpoints reshard: strategy, ZeRO-1, activation checkpointing and the DeepSpeed JSON may change."""
    stored = TrainConfig(data="a", model="tiny").to_dict()
    moved = TrainConfig(
        data="a", model="tiny", strategy="deepspeed", deepspeed_config="z.json", activation_checkpointing=True
    )
    assert moved.resume_mismatches(stored) == []
    assert TrainConfig(data="a", model="tiny", strategy="ddp", zero1=True).resume_mismatches(stored) == []
    old = {k: v for k, v in stored.items() if k not in ("strategy", "zero1")}  # written before these keys
    assert TrainConfig(data="a", model="tiny").resume_mismatches(old) == []


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_shipped_deepspeed_configs_complete_from_the_train_config(stage: int) -> None:
    from cogview.training.deepspeed_replica import deepspeed_config

    path = CONFIGS / "deepspeed" / f"zero{stage}.json"
    cfg = TrainConfig(data="d", strategy="deepspeed", deepspeed_config=str(path), batch_size=8, grad_accum=3)
    ds = deepspeed_config(cfg, world_size=4)
    assert ds["zero_optimization"]["stage"] == stage
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (2, 3)
    assert ds["train_batch_size"] == 24 and ds["gradient_clipping"] == cfg.grad_clip


def test_deepspeed_json_may_not_contradict_the_train_config(tmp_path: Path) -> None:
    from cogview.training.deepspeed_replica import deepspeed_config

    path = tmp_path / "ds.json"
    cfg = TrainConfig(data="d", strategy="deepspeed", deepspeed_config=str(path), batch_size=8)
    for section, message in [
        ({"train_micro_batch_size_per_gpu": 3}, "differs from the training config's 4"),
        ({"optimizer": {"type": "Adam"}}, "remove the 'optimizer' section"),
        ({"fp16": {"enabled": True}}, "remove the 'fp16' section"),
    ]:
        path.write_text(json.dumps(section))
        with pytest.raises(ConfigError, match=message):
            deepspeed_config(cfg, world_size=2)
