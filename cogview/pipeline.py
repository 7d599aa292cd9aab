"""CogViewPipeline: one model folder -> text tokenizer + transformer + image tokenizer -> jobs.

Each component is trained separately and keeps its own folder (``text_tokenizer/``,
``image_tokenizer/``, ``transformer/``); ``pipeline.json`` beside them records what ties them
together: the unified vocabulary, both tokenizers' fingerprints (checked on load, so a model is
never paired with tokenizers it was not trained with), the text budget, default sampling
settings per job and the jobs the model serves, each with the folder of its transformer: one
multi-task transformer can serve several jobs, or each job can have its own (the shipped default
has three, see docs/default_model.md). The pipeline only composes; each job
(:class:`~cogview.generation.text_to_image.TextToImage`, :class:`~cogview.generation.captioning.Captioner`,
:class:`~cogview.generation.super_resolution.SuperResolution`) is built once from the components.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cogview.checks import check_device, positive_int, prompt_strings
from cogview.data.sequences import DEFAULT_SR_WINDOW, LAYOUT_OVERHEAD, TASKS
from cogview.generation.captioning import Captioner
from cogview.generation.editing import Editor
from cogview.generation.modifiers import Modifiers, Split, modified_result
from cogview.generation.original import (
    SEMANTICS,
    OriginalCaptioner,
    OriginalSuperResolution,
    OriginalTextToImage,
)
from cogview.generation.reranking import CAPTION_SAMPLING_KEYS, best_captions, check_selection, rerank
from cogview.generation.sampling import SamplingConfig
from cogview.generation.super_resolution import SuperResolution
from cogview.generation.text_to_image import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_SAMPLING,
    PromptResult,
    TextToImage,
    sampling_from_dict,
    sampling_to_dict,
)
from cogview.model import CogViewTransformer
from cogview.serialization import CONFIG_NAME, MODEL_INFO_NAME, CheckpointError, read_json, write_json
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vocab import Vocabulary, default_vocab

logger = logging.getLogger(__name__)

# What one call may draw unless the pipeline's max_samples is raised: images (prompts x num_images
# x candidates) or captions (images x num_captions). Each image holds a KV cache row and its
# pixels until the call returns, so an unbounded count only ends in an allocation error.
DEFAULT_MAX_SAMPLES = 256
MAX_CANDIDATES = 64

PIPELINE_NAME = "pipeline.json"
PIPELINE_FORMAT = "cogview.pipeline"
PIPELINE_VERSION = 1
TEXT_TOKENIZER_DIR, IMAGE_TOKENIZER_DIR, TRANSFORMER_DIR = "text_tokenizer", "image_tokenizer", "transformer"
# Each job is served by a model trained on the task of the same name (cogview.json "tasks").
JOBS = TASKS
# Folder of each job's transformer when jobs have their own models.
JOB_FOLDERS = {
    "text_to_image": TRANSFORMER_DIR,
    "image_to_text": "caption",
    "super_resolution": "super_resolution",
}


def default_model_path() -> Path:
    """Where the shipped default model folder lives (``cogview/assets/default``)."""
    return Path(str(importlib.resources.files("cogview").joinpath("assets", "default")))


@dataclass(frozen=True)
class PipelineConfig:
    """The ``pipeline.json`` schema: what ties a model folder's components together.

    Attributes:
        vocab: the unified vocabulary of the tokenizers and transformers.
        text_fingerprint, image_fingerprint: the tokenizers the transformers were trained with.
        jobs: job -> folder of its transformer (see :data:`JOB_FOLDERS`).
        text_budget: the most prompt tokens (None: what fits the text-to-image model).
        sampling: text-to-image sampling defaults per prompt kind (``"default"``, ``"zh"``, ...).
        job_sampling: the other jobs' sampling defaults (absent: the job's own).
        sr_window: low-res codes per super-resolution window side (written with that job).
        candidates: post-selection default (written when both text-to-image and captioning are served).
        caption_candidates: caption candidates re-ranked by default (``post_selection.captions``;
            written when above 1; needs both jobs too).
        selection: how post-selection scores candidates (``post_selection.score``, among
            :data:`~cogview.generation.reranking.SELECTION_SCORES`; written when not ``"caption"``).
        semantics: ``"cogview"`` (our jobs) or ``"original"`` (the released code's jobs, for weights
            converted by ``cogview convert-original``; :mod:`cogview.generation.original`).
    """

    vocab: Vocabulary
    text_fingerprint: str
    image_fingerprint: str
    jobs: Mapping[str, str]
    text_budget: int | None = None
    sampling: Mapping[str, SamplingConfig] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SAMPLING))
    job_sampling: Mapping[str, SamplingConfig] = dataclasses.field(default_factory=dict)
    sr_window: int = DEFAULT_SR_WINDOW
    candidates: int = 1
    semantics: str = "cogview"
    caption_candidates: int = 1
    selection: str = "caption"

    def to_dict(self) -> dict[str, Any]:
        """The contents of ``pipeline.json``; settings of jobs not served are left out."""
        sampling = {"text_to_image": sampling_to_dict(self.sampling)} if "text_to_image" in self.jobs else {}
        sampling.update({job: s.to_dict() for job, s in self.job_sampling.items() if job in self.jobs})
        out = {
            "format": PIPELINE_FORMAT,
            "version": PIPELINE_VERSION,
            "vocab": self.vocab.to_dict(),
            "text_tokenizer": {"fingerprint": self.text_fingerprint},
            "image_tokenizer": {"fingerprint": self.image_fingerprint},
            "text_budget": self.text_budget,
            "jobs": dict(self.jobs),
            "sampling": sampling,
        }
        if "super_resolution" in self.jobs:
            out["super_resolution"] = {"window": self.sr_window}
        if "image_to_text" in self.jobs and "text_to_image" in self.jobs:
            out["post_selection"] = {"candidates": self.candidates}
            if self.caption_candidates > 1:
                out["post_selection"]["captions"] = self.caption_candidates
            if self.selection != "caption":
                out["post_selection"]["score"] = self.selection
        if self.semantics != "cogview":  # written only when set: our folders stay as they were
            out["semantics"] = self.semantics
        return out

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any], folder: Path) -> PipelineConfig:
        """Read the ``pipeline.json`` of the model folder ``folder``; anything missing, of another
        format or invalid raises :class:`~cogview.serialization.CheckpointError` naming the file."""
        path = folder / PIPELINE_NAME
        if meta.get("format") != PIPELINE_FORMAT:
            raise CheckpointError(f"{path} has format {meta.get('format')!r}, expected {PIPELINE_FORMAT!r}")
        if meta.get("version") != PIPELINE_VERSION:
            raise CheckpointError(
                f"{path} has version {meta.get('version')!r}; this cogview reads "
                f"version {PIPELINE_VERSION}: upgrade cogview or re-save the model"
            )
        try:
            vocab = Vocabulary.from_dict(meta["vocab"])
            all_sampling = meta.get("sampling", {})
            sampling = sampling_from_dict(
                all_sampling.get("text_to_image", sampling_to_dict(DEFAULT_SAMPLING))
            )
            job_sampling = {
                job: SamplingConfig.from_dict(all_sampling[job])
                for job in ("image_to_text", "super_resolution")
                if job in all_sampling
            }
            text_budget = meta.get("text_budget")
            jobs = _job_dirs(meta.get("jobs", ["text_to_image"]), folder)
            sr_window = positive_int(
                "super_resolution.window", meta.get("super_resolution", {}).get("window", DEFAULT_SR_WINDOW)
            )
            candidates = _check_candidates(meta.get("post_selection", {}).get("candidates", 1))
            caption_candidates = _check_candidates(meta.get("post_selection", {}).get("captions", 1))
            if caption_candidates > 1 and not {"text_to_image", "image_to_text"} <= set(jobs):
                raise ValueError(f"post_selection.captions={caption_candidates} needs text_to_image and image_to_text")
            selection = check_selection(meta.get("post_selection", {}).get("score", "caption"))
            semantics = _check_semantics(meta.get("semantics", "cogview"))
            text_fp = meta["text_tokenizer"]["fingerprint"]
            image_fp = meta["image_tokenizer"]["fingerprint"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path} is incomplete or invalid: {e!r}") from e
        return cls(
            vocab,
            text_fp,
            image_fp,
            jobs,
            text_budget,
            sampling,
            job_sampling,
            sr_window,
            candidates,
            semantics,
            caption_candidates,
            selection,
        )


class CogViewPipeline:
    """Tokenizers, the transformer(s) and the jobs built on them.

    Build it with :meth:`from_pretrained` (a model folder) or :meth:`from_components` (e.g. the
    ``model/`` folders of training runs plus tokenizers); save it with :meth:`save_pretrained`.

    Args:
        transformer: the model of every job in ``jobs`` without an entry in ``job_models``
            (None when ``job_models`` covers them all).
        jobs: the jobs served, among :data:`JOBS`.
        job_models: a separate transformer per job, e.g. ``{"image_to_text": caption_model}``.
        sampling: text-to-image sampling defaults per prompt kind (``{"default": ..., "zh": ...}``).
        job_sampling: sampling defaults of the other jobs (``{"image_to_text": SamplingConfig(...)}``).
        sr_window: low-res codes per super-resolution window side (as in training).
        candidates: text-to-image post-selection default: images drawn per returned image, the
            one whose caption likelihood of the prompt is highest kept (1 = off; more needs
            ``image_to_text``). ``pipeline.json`` keeps it under ``post_selection``.
        semantics: ``"original"`` serves the jobs as the released CogView code did (converted
            weights; :mod:`cogview.generation.original`), ``"cogview"`` (default) as ours.
    """

    def __init__(
        self,
        transformer: CogViewTransformer | None,
        text_tokenizer: TextTokenizer,
        image_tokenizer: ImageTokenizer,
        vocab: Vocabulary,
        *,
        text_budget: int | None = None,
        sampling: Mapping[str, SamplingConfig] | None = None,
        jobs: Sequence[str] = ("text_to_image",),
        job_models: Mapping[str, CogViewTransformer] | None = None,
        job_sampling: Mapping[str, SamplingConfig] | None = None,
        sr_window: int = DEFAULT_SR_WINDOW,
        candidates: int = 1,
        semantics: str = "cogview",
    ) -> None:
        self.semantics = _check_semantics(semantics)
        job_models = dict(job_models or {})
        unknown = sorted(set(jobs) - set(JOBS) | set(job_models) - set(JOBS))
        if unknown:
            raise ValueError(f"unknown job(s) {unknown}; this version serves {list(JOBS)}")
        jobs = tuple(j for j in JOBS if j in jobs or j in job_models)  # canonical order
        if not jobs:
            raise ValueError(f"a pipeline needs at least one job among {list(JOBS)}")
        models = {}
        for job in jobs:
            model = job_models.get(job, transformer)
            if model is None:
                raise ValueError(f"no transformer for job {job!r}: pass transformer= or job_models[{job!r}]")
            models[job] = model
        self.models = models
        self.candidates = _check_candidates(candidates)
        self.max_samples = DEFAULT_MAX_SAMPLES
        # Captions re-ranked by default (pipeline.json's post_selection.captions; set by from_pretrained).
        self.caption_candidates = 1
        # How post-selection scores candidates (post_selection.score; set by from_pretrained).
        self.selection = "caption"
        # Prompt modifiers drawn as base + code map (modifiers.json; set by from_pretrained).
        self.modifiers: Modifiers | None = None
        if candidates > 1 and "image_to_text" not in jobs:
            raise ValueError(
                f"post-selection (candidates={candidates}) needs an image_to_text job to score candidates; "
                f"this pipeline serves {list(jobs)}"
            )
        self.text_tokenizer = text_tokenizer
        self.image_tokenizer = image_tokenizer
        self.vocab = vocab
        self.jobs = jobs
        self.sr_window = sr_window
        self.job_sampling = dict(job_sampling or {})
        self._text_budget, self._sampling = text_budget, sampling
        self._build()

    def _build(self) -> None:
        args = (self.text_tokenizer, self.image_tokenizer, self.vocab)
        m, js = self.models, self.job_sampling
        original = self.semantics == "original"
        self.text_to_image = self.captioner = self.super_resolution = None
        if "text_to_image" in m:
            self.text_to_image = (OriginalTextToImage if original else TextToImage)(
                m["text_to_image"], *args, text_budget=self._text_budget, sampling=self._sampling
            )
        if "image_to_text" in m:
            captioner = OriginalCaptioner if original else Captioner
            self.captioner = captioner(m["image_to_text"], *args, sampling=js.get("image_to_text"))
        if "super_resolution" in m:
            self.super_resolution = (OriginalSuperResolution if original else SuperResolution)(
                m["super_resolution"], *args, window=self.sr_window, sampling=js.get("super_resolution")
            )

    @property
    def transformer(self) -> CogViewTransformer:
        """The text-to-image transformer (else the first job's)."""
        return self.models.get("text_to_image", next(iter(self.models.values())))

    def _job(self, job: str) -> Any:
        served = {"text_to_image": self.text_to_image, "image_to_text": self.captioner}
        served["super_resolution"] = self.super_resolution
        if served[job] is None:
            raise ValueError(
                f"this model folder does not serve {job} (it serves {list(self.jobs)}; see jobs in pipeline.json)"
            )
        return served[job]

    # --- jobs ---------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | Sequence[str],
        num_images: int = 1,
        *,
        seed: int | None = None,
        sampling: SamplingConfig | None = None,
        candidates: int | None = None,
        selection: str | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        dtype: torch.dtype | str | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        modifiers: bool = True,
        **overrides: Any,
    ) -> list[Image.Image]:
        """``num_images`` images per prompt (Chinese or English), in prompt order.

        Sampling: ``sampling`` for every prompt, else the model's defaults for the prompt's kind
        (``pipeline.json``), with the keyword ``overrides`` ``temperature``, ``top_k``, ``top_p``,
        ``guidance_scale`` and ``min_p`` applied where not None.
        The same prompt, seed and settings give the same images; ``seed=None`` draws one from
        ``generator`` if given, else at random (use :meth:`TextToImage.run` to get it back).
        ``candidates=N`` draws N images per requested one and keeps the one whose caption
        likelihood of the prompt is highest (CogView's post-selection; needs ``image_to_text``);
        None takes the model's default (:attr:`candidates`), 1 switches it off. ``selection``
        ``"joint"`` adds the text-to-image model's own ``log p(image | prompt)`` to that score
        (:data:`~cogview.generation.reranking.SELECTION_SCORES`); None: the model's default
        (:attr:`selection`). ``modifiers``: see :meth:`generate_results`.
        """
        results = self.generate_results(
            prompt,
            num_images,
            seed=seed,
            sampling=sampling,
            candidates=candidates,
            selection=selection,
            max_batch_size=max_batch_size,
            dtype=dtype,
            generator=generator,
            progress=progress,
            modifiers=modifiers,
            **overrides,
        )
        return [im for r in results for im in r.images]

    def generate_results(
        self,
        prompt: str | Sequence[str],
        num_images: int = 1,
        *,
        candidates: int | None = None,
        selection: str | None = None,
        modifiers: bool = True,
        **kwargs: Any,
    ) -> list[PromptResult]:
        """Like :meth:`generate`, with per-prompt records (seeds, settings, reranking scores).

        A prompt holding a modifier phrase of the model's (``modifiers.json``, e.g. a skin tone) is
        drawn without it and its codes are mapped (:mod:`cogview.generation.modifiers`); the
        record names the modifier and the prompt drawn. ``modifiers=False`` draws every prompt as given.
        """
        asked = prompt_strings(prompt)
        splits = [self.modifier_of(p) if modifiers else None for p in asked]
        if any(splits):
            drawn = [p if s is None else s.prompt for p, s in zip(asked, splits, strict=True)]
            results = self.generate_results(drawn, num_images, candidates=candidates, selection=selection, modifiers=False, **kwargs)
            decode = self.image_tokenizer.decode
            return [
                r if s is None else modified_result(r, s, p, decode)
                for r, s, p in zip(results, splits, asked, strict=True)
            ]
        t2i = self._job("text_to_image")
        candidates = self.candidates if candidates is None else _check_candidates(candidates)
        selection = self.selection if selection is None else check_selection(selection)
        n_prompts = len(prompt_strings(prompt))
        num_images = positive_int("num_images", num_images)
        self._check_samples(
            n_prompts * num_images * candidates,
            f"{n_prompts} prompt(s) x {num_images} image(s) x {candidates} candidate(s)",
        )
        if candidates == 1:
            return t2i.run(prompt, num_images, **kwargs)
        captioner = self._job("image_to_text")
        results = t2i.run(prompt, num_images * candidates, **kwargs)
        scorer = t2i if selection == "joint" else None
        return [
            rerank(r, captioner, candidates, kwargs.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE), t2i=scorer)
            for r in results
        ]

    def modifier_of(self, prompt: str) -> Split | None:
        """``prompt`` without the longest modifier phrase of the model's it holds, and the modifier
        (None: the model has no modifiers, or the prompt holds none)."""
        return None if self.modifiers is None else self.modifiers.split(prompt)

    def caption(
        self,
        images: Image.Image | Sequence[Image.Image],
        language: str = "zh",
        num_captions: int | None = None,
        *,
        candidates: int | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """``num_captions`` captions per image in ``language`` ("zh" or "en"), image by image (see
        :meth:`Captioner.caption` for the sampling settings). None: the job's default (1; the
        original script's 8 under ``semantics="original"``).

        ``beams`` > 1 (a keyword): the ``num_captions`` most likely captions of a beam search.

        ``candidates`` > 1: one caption per image, the best of the ``candidates`` most likely
        captions (a beam search of that width) by caption score plus the text-to-image model's
        ``log p(image | caption)`` (:func:`~cogview.generation.reranking.best_captions`; needs the
        text_to_image job). With sampling overrides the candidates are the greedy caption and
        ``candidates - 1`` sampled ones (``seed`` None: 0, so that a caption stays an answer).
        None: the model's default (:attr:`caption_candidates`) for one caption per image without
        sampling settings, else 1.
        """
        captioner = self._job("image_to_text")
        num_captions = captioner.default_num_captions if num_captions is None else num_captions
        num_captions = positive_int("num_captions", num_captions)
        if candidates is None:
            sampled = any(kwargs.get(k) is not None for k in CAPTION_SAMPLING_KEYS)
            candidates = self.caption_candidates if num_captions == 1 and not sampled else 1
        candidates = _check_candidates(candidates)
        n_images = 1 if isinstance(images, Image.Image) else len(images)
        if candidates == 1:
            self._check_samples(n_images * num_captions, f"{n_images} image(s) x {num_captions} caption(s)")
            return captioner.caption(images, language, num_captions, **kwargs)
        if num_captions != 1:
            raise ValueError(
                f"candidates={candidates} chooses one caption per image; got num_captions={num_captions} "
                "(ask for several sampled captions without candidates)"
            )
        if kwargs.get("beams", 1) != 1:
            raise ValueError(f"candidates={candidates} come from a beam of that width: leave beams out")
        if self.semantics != "cogview":
            raise ValueError(
                "caption candidates are re-ranked by our text-to-image job; not with semantics='original'"
            )
        t2i = self._job("text_to_image")
        if n_images == 0:
            raise ValueError("no images given")
        batch = [images] if isinstance(images, Image.Image) else images  # a list or a pixel tensor
        per_call = max(1, self.max_samples // candidates)  # a default must not refuse a call greedy takes
        return [
            c
            for start in range(0, n_images, per_call)
            for c in best_captions(captioner, t2i, batch[start : start + per_call], language, candidates, **kwargs)
        ]

    def _check_samples(self, total: int, what: str) -> None:
        if total > self.max_samples:
            raise ValueError(
                f"this call would draw {total} samples ({what}), more than the limit of {self.max_samples} "
                "per call: split it into smaller calls, or raise the pipeline's max_samples "
                "(CLI: --max-samples) if you have the memory"
            )

    def score(self, prompt: str, images: Image.Image | Sequence[Image.Image], **kwargs: Any) -> list[float]:
        """``log p(prompt | image)`` per image, from one batched pass: higher fits better (CapS)."""
        return self._job("image_to_text").score(prompt, images, **kwargs)

    def caption_loss(
        self, prompt: str, images: Image.Image | Sequence[Image.Image], **kwargs: Any
    ) -> list[float]:
        """CapLoss per image (SPEC 5): mean cross-entropy of the prompt's tokens given the image."""
        return self._job("image_to_text").caption_loss(prompt, images, **kwargs)

    def upscale(
        self, image: Image.Image | Sequence[Image.Image], prompt: str | None = None, **kwargs: Any
    ) -> Image.Image | list[Image.Image]:
        """The image at twice its size (a list for a list), by token-space super-resolution."""
        out = self._job("super_resolution").upscale(image, prompt, **kwargs)
        return out[0] if isinstance(image, Image.Image) else out

    def edit(self, image: Image.Image, prompt: str, mask: Any = None, **kwargs: Any) -> Image.Image:
        """Edit ``image`` in token space with the text-to-image model (:meth:`Editor.run` has the
        settings, all keyword-only; docs/editing.md).

        One region argument chooses the mode: ``mask`` (pixels) or ``box`` (left, top, right,
        bottom) inpaints the code cells they touch; ``rows`` or ``prefix`` keeps that many code rows
        or codes in raster order and completes the rest; ``shift=(dx, dy)`` or ``pad`` (pixels)
        moves or shrinks the image on the canvas and outpaints the cells it left; ``strength``
        re-samples a seeded fraction of the codes. Kept pixels are the tokenizer's reconstruction.
        """
        return Editor(self._job("text_to_image"), self.captioner).run(image, prompt, mask, **kwargs).image

    def to(self, device: torch.device | str) -> CogViewPipeline:
        """Move the transformers and the image tokenizer to ``device`` (in place; returns self)."""
        device = check_device(device)
        for model in self.models.values():
            model.to(device)
        self.image_tokenizer.to(device)
        self._build()
        return self

    # --- folders ------------------------------------------------------------------------------

    def job_folders(self) -> dict[str, str]:
        """Job -> transformer folder name; jobs sharing one model share its folder."""
        folders: dict[str, str] = {}
        by_model: dict[int, str] = {}
        for job, model in self.models.items():
            folders[job] = by_model.setdefault(id(model), JOB_FOLDERS[job])
        return folders

    def pipeline_config(self) -> PipelineConfig:
        """What ``pipeline.json`` records of this pipeline (the jobs' settings as built)."""
        t2i = self.text_to_image
        jobs = (("image_to_text", self.captioner), ("super_resolution", self.super_resolution))
        return PipelineConfig(
            vocab=self.vocab,
            text_fingerprint=self.text_tokenizer.fingerprint,
            image_fingerprint=self.image_tokenizer.fingerprint,
            jobs=self.job_folders(),
            text_budget=None if t2i is None else t2i.text_budget,
            sampling=DEFAULT_SAMPLING if t2i is None else t2i.sampling,
            job_sampling={job: built.sampling for job, built in jobs if built is not None},
            sr_window=self.sr_window,
            candidates=self.candidates,
            semantics=self.semantics,
            caption_candidates=self.caption_candidates,
            selection=self.selection,
        )

    def config(self) -> dict[str, Any]:
        """The contents of ``pipeline.json``."""
        return self.pipeline_config().to_dict()

    def save_pretrained(self, directory: str | os.PathLike, max_shard_bytes: int | None = None) -> None:
        """Write ``text_tokenizer/``, ``image_tokenizer/``, one folder per distinct transformer and
        ``pipeline.json`` (last: a folder holding it is complete). ``max_shard_bytes``: a
        transformer's weights larger than that are saved in shards with an index."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"{directory} is a file; save_pretrained needs a folder path")
        self.text_tokenizer.save_pretrained(directory / TEXT_TOKENIZER_DIR)
        self.image_tokenizer.save_pretrained(directory / IMAGE_TOKENIZER_DIR)
        for job, folder in self.job_folders().items():
            if JOB_FOLDERS[job] == folder:
                self.models[job].save_pretrained(directory / folder, max_shard_bytes=max_shard_bytes)
        if self.modifiers is not None:
            self.modifiers.save(directory)
        write_json(directory / PIPELINE_NAME, self.config())

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
        if device is not None:
            check_device(device)  # before minutes of loading, not after
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
        config = PipelineConfig.from_dict(read_json(folder / PIPELINE_NAME), folder)
        text_tokenizer = _load(TextTokenizer.from_pretrained, folder / TEXT_TOKENIZER_DIR, "text tokenizer")
        image_tokenizer = _load(
            ImageTokenizer.from_pretrained, folder / IMAGE_TOKENIZER_DIR, "image tokenizer"
        )
        _check_fingerprint("text tokenizer", text_tokenizer.fingerprint, config.text_fingerprint, folder)
        _check_fingerprint("image tokenizer", image_tokenizer.fingerprint, config.image_fingerprint, folder)
        loaded: dict[str, CogViewTransformer] = {}
        for name in dict.fromkeys(config.jobs.values()):
            loaded[name] = _load(
                lambda p: CogViewTransformer.from_pretrained(p, dtype=dtype), folder / name, "transformer"
            )
        pipe = cls(
            None,
            text_tokenizer,
            image_tokenizer,
            config.vocab,
            text_budget=config.text_budget,
            sampling=config.sampling,
            jobs=tuple(config.jobs),
            job_models={job: loaded[name] for job, name in config.jobs.items()},
            job_sampling=config.job_sampling,
            sr_window=config.sr_window,
            candidates=config.candidates,
            semantics=config.semantics,
        )
        pipe.caption_candidates = config.caption_candidates
        pipe.selection = config.selection
        pipe.modifiers = Modifiers.load(folder)
        if pipe.modifiers is not None:
            grid, size = image_tokenizer.grid_size, image_tokenizer.codebook_size
            pipe.modifiers.check_tokenizer(image_tokenizer.fingerprint, grid, size)
        return pipe if device is None else pipe.to(device)

    @classmethod
    def from_components(
        cls,
        transformer: CogViewTransformer
        | str
        | os.PathLike
        | Mapping[str, CogViewTransformer | str | os.PathLike],
        text_tokenizer: TextTokenizer | str | os.PathLike | None = None,
        image_tokenizer: ImageTokenizer | str | os.PathLike | None = None,
        vocab: Vocabulary | None = None,
        *,
        text_budget: int | None = None,
        sampling: Mapping[str, SamplingConfig] | None = None,
        job_sampling: Mapping[str, SamplingConfig] | None = None,
        sr_window: int = DEFAULT_SR_WINDOW,
        candidates: int = 1,
    ) -> CogViewPipeline:
        """Compose a pipeline from transformers (models or folders) and tokenizers (objects, folders
        or None for the shipped defaults).

        ``transformer`` is one model or folder, or a mapping job -> model or folder. A folder
        written by training (``RUN/model/``) carries ``cogview.json``: its vocabulary and tokenizer
        fingerprints are checked against the tokenizers, its training tasks name the jobs it serves
        (when not given by a mapping), and its sequence length gives the text budget. Without it,
        the vocabulary defaults to :func:`~cogview.tokenizers.vocab.default_vocab` of the two tokenizers.
        """
        if not isinstance(text_tokenizer, TextTokenizer):
            text_tokenizer = _load(TextTokenizer.from_pretrained, text_tokenizer, "text tokenizer")
        if not isinstance(image_tokenizer, ImageTokenizer):
            image_tokenizer = _load(ImageTokenizer.from_pretrained, image_tokenizer, "image tokenizer")
        given = dict(transformer) if isinstance(transformer, Mapping) else {None: transformer}
        models: dict[str, CogViewTransformer] = {}
        for job, source in given.items():
            info: dict[str, Any] = {}
            if not isinstance(source, CogViewTransformer):
                folder = Path(source)
                if (folder / MODEL_INFO_NAME).is_file():
                    info = read_json(folder / MODEL_INFO_NAME)
                source = _load(CogViewTransformer.from_pretrained, folder, "transformer")
            jobs = [job] if job is not None else _jobs_of(info.get("tasks"))
            for j in jobs:
                models[j] = source
            if info:
                _check_training_info(info, text_tokenizer, image_tokenizer)
                trained_vocab = Vocabulary.from_dict(info["vocab"])
                if vocab is not None and vocab != trained_vocab:
                    raise ValueError(
                        f"vocab {vocab} differs from the one the transformer was trained with, {trained_vocab}"
                    )
                vocab = trained_vocab
                if text_budget is None and info.get("seq_len") and "text_to_image" in jobs:
                    overhead = LAYOUT_OVERHEAD["text_to_image"]
                    text_budget = int(info["seq_len"]) - overhead - image_tokenizer.grid_size**2
        vocab = vocab or default_vocab(image_tokenizer, text_tokenizer)
        return cls(
            None,
            text_tokenizer,
            image_tokenizer,
            vocab,
            text_budget=text_budget,
            sampling=sampling,
            jobs=tuple(models),
            job_models=models,
            job_sampling=job_sampling,
            sr_window=sr_window,
            candidates=candidates,
        )


def _jobs_of(tasks: Sequence[str] | None) -> list[str]:
    """The jobs a model trained on ``tasks`` serves (text-to-image when unknown)."""
    jobs = [job for job in JOBS if tasks and job in tasks]
    return jobs or ["text_to_image"]


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
    # An image tokenizer whose decoder was trained further gives the codes of its parents too.
    for what, found, accepted, key in (
        ("text tokenizer", text.fingerprint, (text.fingerprint,), "text_tokenizer"),
        ("image tokenizer", image.fingerprint, image.fingerprints, "image_tokenizer"),
    ):
        expected = info.get(key)
        if isinstance(expected, Mapping):
            expected = expected.get("fingerprint")
        if expected is not None and expected not in accepted:
            raise CheckpointError(
                f"the transformer was trained with the {what} of fingerprint {expected}, but the given "
                f"one has {found}: pass the {what} the training data was prepared with"
            )


def _job_dirs(jobs: Any, folder: Path) -> dict[str, str]:
    """pipeline.json ``jobs``: a list of job names (each uses transformer/, as older folders and the
    converter write) or a mapping job -> transformer folder, which must be a folder inside the model's."""
    if isinstance(jobs, list) and all(isinstance(j, str) for j in jobs):
        return {job: TRANSFORMER_DIR for job in jobs}
    if not isinstance(jobs, Mapping):
        raise ValueError(f"jobs must be a list of job names or a mapping of job to folder, got {jobs!r}")
    root = folder.resolve()
    for job, name in jobs.items():
        inside = isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name
        if not inside or (folder / name).resolve().parent != root or "\\" in name:
            raise ValueError(f"jobs[{job!r}] = {name!r} must name a folder inside the model folder")
    return dict(jobs)


def _check_semantics(semantics: Any) -> str:
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {list(SEMANTICS)}, got {semantics!r}")
    return semantics


def _check_candidates(candidates: Any) -> int:
    return positive_int("candidates", candidates, hint=" (1 = no post-selection)", most=MAX_CANDIDATES)
