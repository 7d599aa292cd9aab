"""Text-to-image: prompt -> ``[ROI1] text [BASE] [BOI1]`` -> image codes -> pixels (SPEC 2.4, 3.1-3.3).

:class:`TextToImage` is built once from loaded components (transformer, tokenizers, vocabulary)
and takes every per-call setting as an argument. Beyond CogView it adds classifier-free guidance
(the empty-text prompt ``[ROI1] [BASE] [BOI1]`` of caption dropout as the unconditional row), one
random stream per image (same seed, same image, however the batch is chunked), chunking for any
number of images (no ``N % M`` rule, SPEC 3.2) with halving on out-of-memory errors, and a choice
of compute dtype. Images are decoded with clamping, not the original's min-max stretch (SPEC 3.3).
"""

from __future__ import annotations

import copy
import logging
import math
import secrets
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from cogview.checks import check_seed, check_text, positive_int, prompt_strings
from cogview.data import sequences
from cogview.generation.batching import (
    image_seed,
    image_uniforms,
    progress_bar,
    resolve_dtype,
    run_chunked,
)
from cogview.generation.components import Components
from cogview.generation.decode import DecodeStep, PromptState, prefill, sample_tokens
from cogview.generation.sampling import SamplingConfig, resolve_sampling
from cogview.language import text_language
from cogview.model import CogViewTransformer
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vocab import Vocabulary

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Layout tokens around the text: [ROI1] before it, [BASE] [BOI1] after it.
PROMPT_OVERHEAD = 3
DEFAULT_MAX_BATCH_SIZE = 16

# Sampling defaults for model folders that name none, and for from_components. Measured on the
# shipped model (docs/generation.md, "Choosing the defaults"; re-measured on the continued model in
# docs/shapes_model.md): guidance 1.5 with top-k 20 aligned best on average for zh and en prompts;
# guidance 2 and 3 broke colour and position on shapes. Temperature 0.3-0.5 beat 0.7 and 1.0 on
# the third-stage model (a small model's tails draw stray codes that break a shape's outline).
# min_p 0.15 (plausibility under the conditional model) lifted shapes by 1.5-4 points and digits by
# 1.5-2 at guidance 1.5 on the fourth-stage model, and keeps guidance 2-3 from breaking shapes.
DEFAULT_SAMPLING: dict[str, SamplingConfig] = {
    "default": SamplingConfig(temperature=0.4, top_k=20, top_p=0.0, guidance_scale=1.5, min_p=0.15),
}


def prompt_kind(prompt: str) -> str:
    """The prompt's language (:func:`cogview.language.text_language`), which keys the sampling defaults."""
    return text_language(prompt)


@dataclass(frozen=True)
class PromptResult:
    """Everything one prompt produced, with what is needed to reproduce it."""

    prompt: str
    kind: str
    settings: SamplingConfig
    seed: int
    image_seeds: list[int]
    prompt_tokens: list[int]
    truncated: bool
    codes: torch.Tensor  # [N, h, w] VQ codes
    images: list[Image.Image]
    rerank: dict[str, Any] | None = None  # candidates' scores and which was kept, when reranked
    negative_prompt: str | None = None  # guidance's unconditional text, when not the empty one
    modifier: dict[str, str] | None = None  # the modifier applied and the prompt drawn (generation.modifiers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (everything but the codes and images)."""
        return {
            "prompt": self.prompt,
            "kind": self.kind,
            "settings": self.settings.to_dict(),
            "seed": self.seed,
            "image_seeds": self.image_seeds,
            "num_images": len(self.images),
            "prompt_tokens": self.prompt_tokens,
            "truncated": self.truncated,
            **({"negative_prompt": self.negative_prompt} if self.negative_prompt else {}),
            **({"modifier": self.modifier} if self.modifier is not None else {}),
            **({"rerank": self.rerank} if self.rerank is not None else {}),
        }


class TextToImage(Components):
    """Generate images for text prompts with a CogView transformer and its two tokenizers.

    Args:
        transformer: the model (its weights' dtype and device are the defaults for generation).
        text_tokenizer, image_tokenizer: the tokenizers it was trained with.
        vocab: the unified vocabulary of the three.
        text_budget: the most text tokens of a prompt; longer prompts are cut with a warning.
            None: what fits ``max_seq_len`` with the image.
        sampling: default :class:`SamplingConfig` per prompt kind (:func:`prompt_kind`), with a
            ``"default"`` entry for the other kinds.
    """

    # torch.compile backend of compile=True off CUDA ("aot_eager" traces the same full graph
    # without generating code: the tests use it, as inductor takes minutes on a small CPU).
    compile_backend: str = "inductor"

    def __init__(
        self,
        transformer: CogViewTransformer,
        text_tokenizer: TextTokenizer,
        image_tokenizer: ImageTokenizer,
        vocab: Vocabulary,
        *,
        text_budget: int | None = None,
        sampling: Mapping[str, SamplingConfig] | None = None,
    ) -> None:
        super().__init__(transformer, text_tokenizer, image_tokenizer, vocab)
        n_codes = image_tokenizer.grid_size**2
        room = transformer.config.max_seq_len - PROMPT_OVERHEAD - n_codes
        if room < 0:
            raise ValueError(
                f"the transformer's max_seq_len={transformer.config.max_seq_len} cannot hold "
                f"{PROMPT_OVERHEAD} layout tokens and {n_codes} image codes"
            )
        if text_budget is not None and not 0 <= text_budget <= room:
            raise ValueError(f"text_budget={text_budget} must lie in [0, {room}] for this model")
        self.text_budget = room if text_budget is None else text_budget
        self.sampling = dict(DEFAULT_SAMPLING if sampling is None else sampling)
        if "default" not in self.sampling:
            raise ValueError(f"sampling defaults need a 'default' entry, got kinds {sorted(self.sampling)}")
        self._models: dict[torch.dtype, CogViewTransformer] = {}
        self._compiled: dict[torch.dtype, DecodeStep] = {}

    @property
    def num_tokens(self) -> int:
        """Image codes per image (the number of decode steps)."""
        return self.image_tokenizer.grid_size**2

    # --- prompts ---------------------------------------------------------------------------------

    def prompt_tokens(self, prompt: str) -> tuple[torch.Tensor, bool]:
        """``[ROI1] text [BASE] [BOI1]`` (a prefix of the training layout) and whether the text was cut."""
        check_text("prompt", prompt)
        if not prompt.strip():
            raise ValueError("empty prompt: give some text to draw (e.g. 'a red circle')")
        n = len(self.text_tokenizer.encode(prompt))
        truncated = n > self.text_budget
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # replaced by the warning below, which names the budget
            text = self.text_tokenizer.encode_unified(prompt, self.vocab, max_length=self.text_budget)
        if truncated:
            warnings.warn(
                f"prompt {prompt[:40]!r}... has {n} text tokens, more than the model's text budget of "
                f"{self.text_budget}; keeping the first {len(text)}",
                UserWarning,
                stacklevel=3,
            )
        return self._layout_prefix(text), truncated

    def uncond_tokens(self, negative_prompt: str | None = None) -> torch.Tensor:
        """Guidance's unconditional row: the empty-text prompt ``[ROI1] [BASE] [BOI1]`` (caption
        dropout's rows in training), or a negative prompt's layout (None or blank: the empty one)."""
        if negative_prompt is None or not negative_prompt.strip():
            return self._layout_prefix([])
        return self.prompt_tokens(negative_prompt)[0]

    def check_negative(self, negative_prompt: str | None, settings: Sequence[SamplingConfig]) -> str | None:
        """The negative prompt to use (None for none or a blank one); refused where guidance, the
        only way it acts, is off."""
        if negative_prompt is None:
            return None
        check_text("negative_prompt", negative_prompt)
        if not negative_prompt.strip():
            return None
        if not all(s.guided for s in settings):
            raise ValueError(
                "negative_prompt acts through classifier-free guidance, which is off "
                "(guidance_scale=1): set guidance_scale above 1, e.g. 1.5"
            )
        return negative_prompt

    def _layout_prefix(self, text: list[int]) -> torch.Tensor:
        g = self.image_tokenizer.grid_size
        full = sequences.text_to_image(
            np.asarray(text, dtype=np.int64), np.zeros((g, g), np.int64), self.vocab
        )
        return torch.from_numpy(full.tokens[: len(text) + PROMPT_OVERHEAD].copy())  # [T]

    def settings_for(
        self, prompt: str, sampling: SamplingConfig | None = None, **overrides: Any
    ) -> SamplingConfig:
        """``sampling`` (else the defaults of the prompt's kind), with the non-None ``overrides`` applied."""
        defaults = self.sampling.get(prompt_kind(prompt), self.sampling["default"])
        return resolve_sampling(defaults, sampling, overrides)

    # --- generation ------------------------------------------------------------------------------

    def resolved_dtype(self, dtype: torch.dtype | str | None = None) -> torch.dtype:
        """The compute dtype a call with ``dtype`` uses (None: the weights' dtype if not float32,
        else the device's default)."""
        weights_dtype = self.transformer.tok_embeddings.weight.dtype
        if dtype is None and weights_dtype != torch.float32:
            dtype = weights_dtype  # loaded in a lower precision on purpose: compute in it
        return resolve_dtype(dtype, self.device)

    def model_in(self, dtype: torch.dtype) -> CogViewTransformer:
        """The transformer in ``dtype`` (a copy, made once, when it differs from the loaded weights)."""
        if self.transformer.tok_embeddings.weight.dtype == dtype:
            return self.transformer
        if dtype not in self._models:
            logger.info("casting a copy of the transformer to %s", dtype)
            self._models[dtype] = copy.deepcopy(self.transformer).to(dtype).eval()
        return self._models[dtype]

    def run(
        self,
        prompts: str | Sequence[str],
        num_images: int = 1,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        sampling: SamplingConfig | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        dtype: torch.dtype | str | None = None,
        progress: bool = False,
        compile: bool = False,
        negative_prompt: str | None = None,
        **overrides: Any,
    ) -> list[PromptResult]:
        """Generate ``num_images`` per prompt.

        Settings: ``sampling`` for every prompt, else the defaults of each prompt's kind, with the
        per-field ``overrides`` (``temperature``, ``top_k``, ``top_p``, ``guidance_scale``,
        ``min_p``) applied where not None. ``compile=True`` decodes with a fixed-shape step: captured
        in CUDA graphs on a GPU, else wrapped in ``torch.compile`` (batches padded to
        :data:`~cogview.generation.step.BATCH_BUCKETS`; the first call per bucket compiles).
        ``negative_prompt`` replaces guidance's empty-text row, so that ``uncond + s * (cond -
        uncond)`` steers away from what that text would draw (it needs ``guidance_scale`` != 1).

        Randomness: image i of a prompt samples from its own stream, seeded by :func:`image_seed`
        ``(seed, i)``, so the same prompt, seed and settings give the same images whatever the
        other prompts and (up to float rounding) ``max_batch_size``. ``seed=None`` takes one from
        ``generator`` if given, else a fresh random one; it is in the results.
        """
        prompt_list = prompt_strings(prompts)
        num_images = positive_int("num_images", num_images)
        max_batch_size = positive_int("max_batch_size", max_batch_size)
        seed = check_seed(seed)
        if seed is None:
            if generator is not None:
                seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            else:
                seed = secrets.randbits(62)
                logger.info("no seed given; using seed %d", seed)
        compute_dtype = self.resolved_dtype(dtype)
        encoded = [
            (p, *self.prompt_tokens(p), self.settings_for(p, sampling, **overrides)) for p in prompt_list
        ]
        negative = self.check_negative(negative_prompt, [settings for *_, settings in encoded])
        uncond = self.uncond_tokens(negative)
        model = self.model_in(compute_dtype)
        step = self.step_for(model, compile)
        results = []
        bar = progress_bar(progress, len(prompt_list) * num_images * self.num_tokens)
        try:
            for prompt, tokens, truncated, settings in encoded:
                seeds = [image_seed(seed, i) for i in range(num_images)]
                codes = self._codes(model, step, tokens, uncond, settings, seeds, max_batch_size, bar)
                images = self._images(codes, max_batch_size)
                results.append(
                    PromptResult(
                        prompt=prompt,
                        kind=prompt_kind(prompt),
                        settings=settings,
                        seed=seed,
                        image_seeds=seeds,
                        prompt_tokens=tokens.tolist(),
                        truncated=truncated,
                        codes=codes,
                        images=images,
                        negative_prompt=negative,
                    )
                )
        finally:
            if bar is not None:
                bar.close()
        return results

    def __call__(self, prompts: str | Sequence[str], num_images: int = 1, **kwargs: Any) -> list[Image.Image]:
        """Images of all prompts, ``num_images`` each, in prompt order (see :meth:`run`)."""
        return [im for r in self.run(prompts, num_images, **kwargs) for im in r.images]

    def step_for(self, model: CogViewTransformer, compile: bool) -> DecodeStep:
        """The decode step for ``model``: eager, or compiled once and kept (graphs are reused).

        Compiled means captured in CUDA graphs on a GPU (one launch per step, no code generation),
        ``torch.compile(fullgraph=True)`` elsewhere.
        """
        if not compile:
            return DecodeStep(model)
        key = model.tok_embeddings.weight.dtype
        if key not in self._compiled:
            cuda = model.tok_embeddings.weight.device.type == "cuda"
            self._compiled[key] = DecodeStep(
                model, cuda_graph=cuda, compile=not cuda, backend=self.compile_backend
            )
        return self._compiled[key]

    def _codes(
        self,
        model: CogViewTransformer,
        step: DecodeStep,
        tokens: torch.Tensor,
        uncond: torch.Tensor,
        settings: SamplingConfig,
        seeds: list[int],
        max_batch_size: int,
        bar: Any,
    ) -> torch.Tensor:
        """``[N, h, w]`` codes: one prefill shared by every chunk, then chunked decoding."""
        steps = self.num_tokens
        prompts = [tokens, uncond] if settings.guided else [tokens]
        state = prefill(model, prompts, steps, pad_id=self.vocab.token_id("[PAD]"))
        uniforms = image_uniforms(seeds, steps)  # [N, steps]

        def run(start: int, size: int) -> torch.Tensor:
            return self._decode_chunk(model, step, state, uniforms[start : start + size], settings, bar)

        g = self.image_tokenizer.grid_size
        codes = torch.cat(run_chunked(len(seeds), max_batch_size, run))  # [N, steps]
        return codes.view(-1, g, g).cpu()  # [N, h, w]

    def _images(self, codes: torch.Tensor, max_batch_size: int) -> list[Image.Image]:
        def decode(start: int, size: int) -> list[Image.Image]:
            return self.image_tokenizer.decode(codes[start : start + size])

        return [im for chunk in run_chunked(len(codes), max_batch_size, decode) for im in chunk]

    def _decode_chunk(
        self,
        model: CogViewTransformer,
        step: DecodeStep,
        state: PromptState,
        uniforms: torch.Tensor,
        settings: SamplingConfig,
        bar: Any,
    ) -> torch.Tensor:
        out = torch.empty(uniforms.shape, dtype=torch.long, device=state.last_logits.device)  # [n, steps]
        done = 0
        try:
            for i, ids in enumerate(sample_tokens(model, state, uniforms, settings, self.vocab.image_range, step)):
                out[:, i] = ids  # image codes are ids [0, image_size): no offset to remove
                done += 1
                if bar is not None:
                    bar.update(len(ids))
        finally:
            if bar is not None and done < uniforms.shape[1]:  # a retried chunk: rewind the bar
                bar.update(-done * uniforms.shape[0])
        return out


def sampling_from_dict(data: Mapping[str, Any]) -> dict[str, SamplingConfig]:
    """``{"default": {...}, "zh": {...}}`` -> configs; each kind's entry overrides ``default``'s fields."""
    if "default" not in data:
        raise ValueError(f"sampling settings need a 'default' entry, got {sorted(data)}")
    base = SamplingConfig.from_dict(data["default"])
    return {kind: SamplingConfig.from_dict({**base.to_dict(), **v}) for kind, v in data.items()}


def sampling_to_dict(sampling: Mapping[str, SamplingConfig]) -> dict[str, dict[str, Any]]:
    return {kind: config.to_dict() for kind, config in sampling.items()}


def grid_columns(n: int) -> int:
    """Columns of a near-square grid of ``n`` images."""
    return max(1, math.ceil(math.sqrt(n)))
