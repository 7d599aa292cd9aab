"""CogViewPipeline: one model folder -> text tokenizer + transformer + image tokenizer -> jobs.

Each component is trained separately and keeps its own folder (``text_tokenizer/``,
``image_tokenizer/``, ``transformer/``); ``pipeline.json`` beside them records what ties them
together: the unified vocabulary, both tokenizers' fingerprints (checked on load, so a model is
never paired with tokenizers it was not trained with), the text budget, default sampling
settings per prompt kind and the jobs the model serves. The pipeline only composes; each job
(today :class:`~cogview.generation.text_to_image.TextToImage`) is built once from the components.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cogview.data.prepare import LAYOUT_OVERHEAD, default_vocab
from cogview.generation.sampling import SamplingConfig
from cogview.generation.text_to_image import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_SAMPLING,
    TextToImage,
    sampling_from_dict,
    sampling_to_dict,
)
from cogview.model import CogViewTransformer
from cogview.serialization import CONFIG_NAME, CheckpointError, read_json, write_json
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vocab import Vocabulary

logger = logging.getLogger(__name__)

PIPELINE_NAME = "pipeline.json"
PIPELINE_FORMAT = "cogview.pipeline"
PIPELINE_VERSION = 1
TEXT_TOKENIZER_DIR, IMAGE_TOKENIZER_DIR, TRANSFORMER_DIR = "text_tokenizer", "image_tokenizer", "transformer"
# Written by the training loop next to the transformer weights (cogview.training.loop).
TRAINING_INFO_NAME = "cogview.json"
JOBS = ("text_to_image",)


def default_model_path() -> Path:
    """Where the shipped default model folder lives (``cogview/assets/default``)."""
    return Path(str(importlib.resources.files("cogview").joinpath("assets", "default")))


class CogViewPipeline:
    """Text tokenizer, transformer and image tokenizer of one model, and the jobs built on them.

    Build it with :meth:`from_pretrained` (a model folder) or :meth:`from_components` (e.g. the
    ``model/`` folder of a training run plus tokenizers); save it with :meth:`save_pretrained`.
    """

    def __init__(
        self,
        transformer: CogViewTransformer,
        text_tokenizer: TextTokenizer,
        image_tokenizer: ImageTokenizer,
        vocab: Vocabulary,
        *,
        text_budget: int | None = None,
        sampling: Mapping[str, SamplingConfig] | None = None,
        jobs: Sequence[str] = JOBS,
    ) -> None:
        unknown = sorted(set(jobs) - set(JOBS))
        if unknown:
            raise ValueError(f"unknown job(s) {unknown}; this version serves {list(JOBS)}")
        self.transformer = transformer
        self.text_tokenizer = text_tokenizer
        self.image_tokenizer = image_tokenizer
        self.vocab = vocab
        self.jobs = tuple(jobs)
        self.text_to_image = TextToImage(
            transformer, text_tokenizer, image_tokenizer, vocab, text_budget=text_budget, sampling=sampling
        )

    # --- jobs ---------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | Sequence[str],
        num_images: int = 1,
        seed: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        dtype: torch.dtype | str | None = None,
        *,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> list[Image.Image]:
        """``num_images`` images per prompt (Chinese or English), in prompt order.

        Settings left None take the model's defaults for the prompt's kind (``pipeline.json``).
        The same prompt, seed and settings give the same images; ``seed=None`` draws one from
        ``generator`` if given, else at random (use :meth:`TextToImage.run` to get it back).
        """
        if "text_to_image" not in self.jobs:
            raise ValueError("this model folder does not serve text_to_image (see jobs in pipeline.json)")
        return self.text_to_image(
            prompt,
            num_images,
            seed=seed,
            generator=generator,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
            max_batch_size=max_batch_size,
            dtype=dtype,
            progress=progress,
        )

    def to(self, device: torch.device | str) -> CogViewPipeline:
        """Move the transformer and the image tokenizer to ``device`` (in place; returns self)."""
        self.transformer.to(device)
        self.image_tokenizer.to(device)
        self.text_to_image = TextToImage(
            self.transformer,
            self.text_tokenizer,
            self.image_tokenizer,
            self.vocab,
            text_budget=self.text_to_image.text_budget,
            sampling=self.text_to_image.sampling,
        )
        return self

    # --- folders ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The contents of ``pipeline.json``."""
        return {
            "format": PIPELINE_FORMAT,
            "version": PIPELINE_VERSION,
            "vocab": self.vocab.to_dict(),
            "text_tokenizer": {"fingerprint": self.text_tokenizer.fingerprint},
            "image_tokenizer": {"fingerprint": self.image_tokenizer.fingerprint()},
            "text_budget": self.text_to_image.text_budget,
            "jobs": list(self.jobs),
            "sampling": {"text_to_image": sampling_to_dict(self.text_to_image.sampling)},
        }

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``text_tokenizer/``, ``image_tokenizer/``, ``transformer/`` and ``pipeline.json``."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"{directory} is a file; save_pretrained needs a folder path")
        self.text_tokenizer.save_pretrained(directory / TEXT_TOKENIZER_DIR)
        self.image_tokenizer.save_pretrained(directory / IMAGE_TOKENIZER_DIR)
        self.transformer.save_pretrained(directory / TRANSFORMER_DIR)
        write_json(directory / PIPELINE_NAME, self.config())  # last: a folder with it is complete

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CogViewPipeline:
        """Load a folder written by :meth:`save_pretrained`; ``None`` loads the shipped default model.

        Raises :class:`~cogview.serialization.CheckpointError` (a ValueError) for a missing or
        unreadable folder, a component that fails to load, or tokenizers whose fingerprints differ
        from the ones recorded in ``pipeline.json``.
        """
        folder = default_model_path() if path is None else Path(path)
        if path is None and not (folder / TRANSFORMER_DIR / CONFIG_NAME).is_file():
            raise CheckpointError(
                f"the default model is not installed: {folder / TRANSFORMER_DIR} has no trained transformer. "
                "Pass the folder of a model (--model PATH), or build one from a training run with "
                "CogViewPipeline.from_components('RUN/model').save_pretrained(PATH)"
            )
        if not folder.is_dir():
            raise CheckpointError(f"model folder {folder} does not exist")
        if not (folder / PIPELINE_NAME).is_file():
            raise CheckpointError(
                f"{folder} is not a CogView model folder: it has no {PIPELINE_NAME}. A training run's "
                "model/ folder is assembled into one with CogViewPipeline.from_components(...).save_pretrained(...)"
            )
        meta = read_json(folder / PIPELINE_NAME)
        if meta.get("format") != PIPELINE_FORMAT:
            raise CheckpointError(
                f"{folder / PIPELINE_NAME} has format {meta.get('format')!r}, expected {PIPELINE_FORMAT!r}"
            )
        if meta.get("version") != PIPELINE_VERSION:
            raise CheckpointError(
                f"{folder / PIPELINE_NAME} has version {meta.get('version')!r}; this cogview reads "
                f"version {PIPELINE_VERSION}: upgrade cogview or re-save the model"
            )
        try:
            vocab = Vocabulary.from_dict(meta["vocab"])
            sampling = sampling_from_dict(meta.get("sampling", {}).get("text_to_image", _default_sampling()))
            text_budget = meta.get("text_budget")
            jobs = tuple(meta.get("jobs", JOBS))
            text_fp = meta["text_tokenizer"]["fingerprint"]
            image_fp = meta["image_tokenizer"]["fingerprint"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{folder / PIPELINE_NAME} is incomplete or invalid: {e!r}") from e
        text_tokenizer = _load(TextTokenizer.from_pretrained, folder / TEXT_TOKENIZER_DIR, "text tokenizer")
        image_tokenizer = _load(
            ImageTokenizer.from_pretrained, folder / IMAGE_TOKENIZER_DIR, "image tokenizer"
        )
        _check_fingerprint("text tokenizer", text_tokenizer.fingerprint, text_fp, folder)
        _check_fingerprint("image tokenizer", image_tokenizer.fingerprint(), image_fp, folder)
        transformer = _load(
            lambda p: CogViewTransformer.from_pretrained(p, dtype=dtype),
            folder / TRANSFORMER_DIR,
            "transformer",
        )
        pipe = cls(
            transformer,
            text_tokenizer,
            image_tokenizer,
            vocab,
            text_budget=text_budget,
            sampling=sampling,
            jobs=jobs,
        )
        return pipe if device is None else pipe.to(device)

    @classmethod
    def from_components(
        cls,
        transformer: CogViewTransformer | str | os.PathLike,
        text_tokenizer: TextTokenizer | str | os.PathLike | None = None,
        image_tokenizer: ImageTokenizer | str | os.PathLike | None = None,
        vocab: Vocabulary | None = None,
        *,
        text_budget: int | None = None,
        sampling: Mapping[str, SamplingConfig] | None = None,
    ) -> CogViewPipeline:
        """Compose a pipeline from a transformer (model or folder) and tokenizers (objects, folders or
        None for the shipped defaults).

        A transformer folder written by training (``RUN/model/``) carries ``cogview.json``: its
        vocabulary and tokenizer fingerprints are checked against the tokenizers, and its
        sequence length gives the text budget. Without it, the vocabulary defaults to
        :func:`~cogview.data.prepare.default_vocab` of the two tokenizers.
        """
        info: dict[str, Any] = {}
        if not isinstance(transformer, CogViewTransformer):
            folder = Path(transformer)
            if (folder / TRAINING_INFO_NAME).is_file():
                info = read_json(folder / TRAINING_INFO_NAME)
            transformer = _load(CogViewTransformer.from_pretrained, folder, "transformer")
        if not isinstance(text_tokenizer, TextTokenizer):
            text_tokenizer = _load(TextTokenizer.from_pretrained, text_tokenizer, "text tokenizer")
        if not isinstance(image_tokenizer, ImageTokenizer):
            image_tokenizer = _load(ImageTokenizer.from_pretrained, image_tokenizer, "image tokenizer")
        if info:
            _check_training_info(info, text_tokenizer, image_tokenizer)
            trained_vocab = Vocabulary.from_dict(info["vocab"])
            if vocab is not None and vocab != trained_vocab:
                raise ValueError(
                    f"vocab {vocab} differs from the one the transformer was trained with, {trained_vocab}"
                )
            vocab = trained_vocab
            if text_budget is None and info.get("seq_len"):
                tasks = info.get("tasks") or ["text_to_image"]
                overhead = max(LAYOUT_OVERHEAD.get(t, LAYOUT_OVERHEAD["text_to_image"]) for t in tasks)
                text_budget = int(info["seq_len"]) - overhead - image_tokenizer.grid_size**2
        vocab = vocab or default_vocab(image_tokenizer, text_tokenizer)
        return cls(
            transformer, text_tokenizer, image_tokenizer, vocab, text_budget=text_budget, sampling=sampling
        )


def _default_sampling() -> dict[str, Any]:
    return sampling_to_dict(DEFAULT_SAMPLING)


def _load(load: Any, path: Any, what: str) -> Any:
    try:
        return load(path)
    except CheckpointError:
        raise
    except (ValueError, OSError) as e:
        raise CheckpointError(f"cannot load the {what} from {path}: {e}") from e


def _check_fingerprint(what: str, found: str, expected: str, folder: Path) -> None:
    if found != expected:
        raise CheckpointError(
            f"the {what} in {folder} has fingerprint {found}, but {folder / PIPELINE_NAME} records "
            f"{expected}: the transformer was trained with another {what}. Put back the matching "
            f"{what} folder, or re-assemble the model with CogViewPipeline.from_components"
        )


def _check_training_info(info: Mapping[str, Any], text: TextTokenizer, image: ImageTokenizer) -> None:
    for what, found, key in (
        ("text tokenizer", text.fingerprint, "text_tokenizer"),
        ("image tokenizer", image.fingerprint(), "image_tokenizer"),
    ):
        expected = info.get(key)
        if isinstance(expected, Mapping):
            expected = expected.get("fingerprint")
        if expected is not None and expected != found:
            raise CheckpointError(
                f"the transformer was trained with the {what} of fingerprint {expected}, but the given "
                f"one has {found}: pass the {what} the training data was prepared with"
            )
