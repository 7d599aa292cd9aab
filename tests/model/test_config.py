"""TransformerConfig: defaults, presets, validation messages and dict round trips."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cogview.model import PRESETS, TransformerConfig


def test_ffn_dim_defaults_to_four_times_dim() -> None:
    assert TransformerConfig(dim=64, n_heads=4).ffn_dim == 256
    assert TransformerConfig(dim=64, n_heads=4, ffn_dim=0).ffn_dim == 256
    assert TransformerConfig(dim=64, n_heads=4, ffn_dim=100).ffn_dim == 100
    assert TransformerConfig(dim=64, n_heads=4).head_dim == 16


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name: str) -> None:
    config = PRESETS[name]
    data = json.loads(json.dumps(config.to_dict()))
    assert TransformerConfig.from_dict(data) == config
    assert isinstance(data["ffn_dim"], int)


def test_cogview_4b_preset_matches_the_released_model() -> None:
    c = PRESETS["cogview-4b"]
    assert (c.vocab_size, c.dim, c.n_layers, c.n_heads, c.ffn_dim, c.max_seq_len) == (
        58240,
        2560,
        48,
        40,
        10240,
        1089,
    )
    assert c.sandwich_ln and c.tied_head and c.norm_eps == 1e-5 and c.head_dim == 64
    assert c.pb_relax_alpha is None and c.ln_input_scaling == "original"


def test_presets_can_be_resized() -> None:
    small = dataclasses.replace(PRESETS["small"], vocab_size=20000)
    assert small.vocab_size == 20000 and small.dim == PRESETS["small"].dim


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["tiny"].dim = 32  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"dim": 100, "n_heads": 3}, "dim=100 is not divisible by n_heads=3"),
        ({"dim": 0}, "dim must be a positive integer, got 0"),
        ({"n_layers": 2.5}, "n_layers must be a positive integer, got 2.5"),
        ({"ffn_dim": -4}, "ffn_dim=-4"),
        ({"dropout": 1.0}, "dropout=1.0 must be a probability"),
        ({"norm_eps": 0.0}, "norm_eps=0.0 must be > 0"),
        ({"pb_relax_alpha": -1.0}, "pb_relax_alpha=-1.0"),
        ({"pb_relax_alpha": True}, "pb_relax_alpha=True"),
        ({"ln_input_scaling": "global"}, "ln_input_scaling='global' is not one of"),
        ({"sandwich_ln": 1}, "sandwich_ln=1 must be true or false"),
        ({"cell_embeddings": -1}, "cell_embeddings=-1 must be 0"),
    ],
)
def test_invalid_configs_say_what_is_wrong(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        TransformerConfig(**kwargs)
    assert fragment in str(info.value)


def test_divisibility_error_suggests_valid_head_counts() -> None:
    with pytest.raises(ValueError) as info:
        TransformerConfig(dim=100, n_heads=3)
    assert "choose n_heads" in str(info.value) and "50" in str(info.value)


def test_from_dict_rejects_unknown_keys_and_lists_them() -> None:
    data = PRESETS["tiny"].to_dict() | {"hidden_size": 2560, "rotary": True}
    with pytest.raises(ValueError) as info:
        TransformerConfig.from_dict(data)
    message = str(info.value)
    assert "['hidden_size', 'rotary']" in message and "valid fields" in message


def test_from_dict_fills_missing_keys_with_defaults() -> None:
    assert TransformerConfig.from_dict({"dim": 32, "n_heads": 2}) == TransformerConfig(dim=32, n_heads=2)
