"""Parts of the tiny random test models that must not follow the shipped model folder.

The tiny transformers of CLI, server, generation and training tests are built over a text
tokenizer. They use a fixed copy of the 576-piece shapes-and-digits tokenizer (the shipped one
until the emoji model), so their vocabulary, their random draws and their speed stay the same
whatever model ships.
"""

from __future__ import annotations

import functools
from pathlib import Path

from cogview.tokenizers.text import TextTokenizer

SMALL_TEXT_TOKENIZER = Path(__file__).parent / "assets" / "text_tokenizer_shapes_digits"


@functools.cache
def small_text_tokenizer() -> TextTokenizer:
    """The 576-piece tokenizer of shapes and digits captions (tests/assets), loaded once."""
    return TextTokenizer.from_pretrained(SMALL_TEXT_TOKENIZER)
