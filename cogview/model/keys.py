"""Names of our transformer parameters in the released CogView state dict (SPEC 1.7).

The map is one-to-one: the fused ``wqkv`` keeps the original's row order Q|K|V, and the tied
head has no tensor of its own in either format. A converter renames with it and checks every
key; see docs/checkpoint_keys.md.
"""

from __future__ import annotations

from cogview.checks import positive_int

# Per layer: our suffix -> the original's suffix under ``transformer.layers.{i}.``
_LAYER_KEYS = {
    "attention_norm": "input_layernorm",
    "attention.wqkv": "attention.query_key_value",
    "attention.wo": "attention.dense",
    "attention_out_norm": "third_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "feed_forward.w1": "mlp.dense_h_to_4h",
    "feed_forward.w2": "mlp.dense_4h_to_h",
    "ffn_out_norm": "fourth_layernorm",
}


def original_key_map(n_layers: int, *, sat: bool = False) -> dict[str, str]:
    """Map each parameter name of a Sandwich-LN, tied-head model to its original state-dict key.

    Args:
        n_layers: number of transformer layers (48 for the released models).
        sat: use the SwissArmyTransformer spelling ``transformer.word_embeddings.weight`` for the
            word table instead of the original top-level ``word_embeddings.weight``.
    """
    positive_int("n_layers", n_layers)
    keys = {
        "tok_embeddings.weight": "transformer.word_embeddings.weight" if sat else "word_embeddings.weight",
        "pos_embeddings.weight": "transformer.position_embeddings.weight",
    }
    for i in range(n_layers):
        for ours, theirs in _LAYER_KEYS.items():
            for kind in ("weight", "bias"):
                keys[f"layers.{i}.{ours}.{kind}"] = f"transformer.layers.{i}.{theirs}.{kind}"
    keys["norm.weight"] = "transformer.final_layernorm.weight"
    keys["norm.bias"] = "transformer.final_layernorm.bias"
    return keys
