"""original_key_map: every parameter of the 4B preset maps to the 772 keys of SPEC 1.7."""

from __future__ import annotations

import re

import pytest
import torch

from cogview.model import PRESETS, CogViewTransformer, original_key_map

H, FFN, VOCAB, POS = 2560, 10240, 58240, 1089


def _spec_shape(key: str) -> tuple[int, ...]:
    """Shapes as listed in SPEC 1.7 (MP=1)."""
    if key.endswith("word_embeddings.weight"):
        return (VOCAB, H)
    if key == "transformer.position_embeddings.weight":
        return (POS, H)
    if re.search(r"layernorm\.(weight|bias)$", key):
        return (H,)
    table = {
        "attention.query_key_value.weight": (3 * H, H),
        "attention.query_key_value.bias": (3 * H,),
        "attention.dense.weight": (H, H),
        "attention.dense.bias": (H,),
        "mlp.dense_h_to_4h.weight": (FFN, H),
        "mlp.dense_h_to_4h.bias": (FFN,),
        "mlp.dense_4h_to_h.weight": (H, FFN),
        "mlp.dense_4h_to_h.bias": (H,),
    }
    suffix = re.sub(r"^transformer\.layers\.\d+\.", "", key)
    return table[suffix]


def _spec_keys(sat: bool) -> set[str]:
    keys = {
        "transformer.word_embeddings.weight" if sat else "word_embeddings.weight",
        "transformer.position_embeddings.weight",
    }
    per_layer = [
        "input_layernorm",
        "attention.query_key_value",
        "attention.dense",
        "post_attention_layernorm",
        "third_layernorm",
        "fourth_layernorm",
        "mlp.dense_h_to_4h",
        "mlp.dense_4h_to_h",
    ]
    for i in range(48):
        keys |= {f"transformer.layers.{i}.{name}.{kind}" for name in per_layer for kind in ("weight", "bias")}
    return keys | {"transformer.final_layernorm.weight", "transformer.final_layernorm.bias"}


@pytest.mark.parametrize("sat", [False, True])
def test_key_map_covers_the_4b_model_one_to_one(sat: bool) -> None:
    with torch.device("meta"):
        state = CogViewTransformer(PRESETS["cogview-4b"]).state_dict()
    mapping = original_key_map(48, sat=sat)
    assert set(mapping) == set(state)
    assert len(set(mapping.values())) == len(mapping) == 772
    assert set(mapping.values()) == _spec_keys(sat)
    for ours, theirs in mapping.items():
        assert tuple(state[ours].shape) == _spec_shape(theirs), (ours, theirs)
    assert sum(state[k].numel() for k in mapping) == 3_928_849_920


def test_key_map_names() -> None:
    mapping = original_key_map(2)
    assert mapping["tok_embeddings.weight"] == "word_embeddings.weight"
    assert (
        mapping["layers.1.attention.wqkv.weight"] == "transformer.layers.1.attention.query_key_value.weight"
    )
    assert mapping["layers.0.attention_out_norm.bias"] == "transformer.layers.0.third_layernorm.bias"
    assert mapping["layers.0.ffn_norm.weight"] == "transformer.layers.0.post_attention_layernorm.weight"
    assert original_key_map(2, sat=True)["tok_embeddings.weight"] == "transformer.word_embeddings.weight"
    with pytest.raises(ValueError):
        original_key_map(0)
