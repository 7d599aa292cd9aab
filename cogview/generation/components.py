"""What every generation job holds: a transformer, its two tokenizers and their shared vocabulary."""

from __future__ import annotations

import torch

from cogview.model import CogViewTransformer
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vocab import Vocabulary


class Components:
    """A transformer with the tokenizers it was trained with, checked against one vocabulary.

    Jobs (text-to-image, captioning, super-resolution) subclass it, so a model is never paired
    with tokenizers of another vocabulary, whichever job it serves.
    """

    def __init__(
        self,
        transformer: CogViewTransformer,
        text_tokenizer: TextTokenizer,
        image_tokenizer: ImageTokenizer,
        vocab: Vocabulary,
    ) -> None:
        if vocab.size != transformer.config.vocab_size:
            raise ValueError(
                f"vocabulary size {vocab.size} differs from the transformer's vocab_size "
                f"{transformer.config.vocab_size}: they were not trained together"
            )
        if vocab.image_size != image_tokenizer.codebook_size:
            raise ValueError(
                f"vocabulary has {vocab.image_size} image codes but the image tokenizer has "
                f"{image_tokenizer.codebook_size}: pass the image tokenizer the model was trained with"
            )
        if vocab.text_size != text_tokenizer.vocab_size:
            raise ValueError(
                f"vocabulary has {vocab.text_size} text pieces but the text tokenizer has "
                f"{text_tokenizer.vocab_size}: pass the text tokenizer the model was trained with"
            )
        self.transformer = transformer.eval()
        self.text_tokenizer = text_tokenizer
        self.image_tokenizer = image_tokenizer
        self.vocab = vocab

    @property
    def device(self) -> torch.device:
        return self.transformer.tok_embeddings.weight.device
