"""Tokenizers: the unified id space and the text tokenizer (the image tokenizer lives beside them)."""

from __future__ import annotations

from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vocab import COMMAND_TOKENS, Vocabulary

__all__ = ["COMMAND_TOKENS", "TextTokenizer", "Vocabulary"]
