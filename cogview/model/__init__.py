"""The CogView transformer: config and presets, the model, its KV cache and the original-key map."""

from cogview.model.config import PRESETS, TransformerConfig
from cogview.model.keys import original_key_map
from cogview.model.kv_cache import KVCache
from cogview.model.transformer import CogViewTransformer

__all__ = ["PRESETS", "CogViewTransformer", "KVCache", "TransformerConfig", "original_key_map"]
