"""Image-to-text: captioning and caption-likelihood scoring ("CapS", SPEC 3.5, 3.6).

Both use the image-first layout ``[BASE] [BOI1] codes [EOI1] [ROI1] text [EOT]``. Captioning
samples text after ``[ROI1]`` with only the pieces of the requested language (and ``[EOT]``)
allowed, and stops at ``[EOT]`` instead of the original's fixed 20 tokens. Scoring is one causal
forward pass over a batch of (image, text) pairs: with image-code logits masked out, the score is
``sum_k log p(text_k | image, text_<k)`` over the text and its ``[EOT]``; CapLoss is its negative
mean over those tokens (SPEC 5). A vocabulary without ``[EOT]`` (the released CogView weights)
gets the original behaviour: captions of a fixed length and scores over the text alone. Scores rank candidate images for a prompt (post-selection) and,
over a set of prompts, classify an image.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from cogview.checks import check_seed, check_text, positive_int
from cogview.generation.batching import image_seed, image_uniforms, progress_bar, resolve_dtype, run_chunked
from cogview.generation.beam import beam_search
from cogview.generation.components import Components
from cogview.generation.decode import Hooks, as_rows, decode, prefill
from cogview.generation.sampling import (
    UNGUIDED_OVERRIDES,
    SamplingConfig,
    resolve_sampling,
)
from cogview.language import LANGUAGES
from cogview.model import CogViewTransformer
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vocab import Vocabulary

# The most likely caption unless told otherwise: captions are answers, not samples.
DEFAULT_CAPTION_SAMPLING = SamplingConfig(temperature=1.0, top_k=1)
# [BASE] [BOI1] before the codes, [EOI1] [ROI1] after them.
PREFIX_OVERHEAD = 4
ORIGINAL_CAPTION_TOKENS = 20  # the original sampled this many text tokens (SPEC 3.6)
DEFAULT_MAX_BATCH_SIZE = 16

Images = Image.Image | Sequence[Image.Image] | torch.Tensor


class Captioner(Components):
    """Caption images and score texts against images with an image-to-text CogView transformer.

    Args:
        transformer: a model trained on image-to-text rows (``cogview prepare --tasks image_to_text``).
        text_budget: the most text tokens of a caption or scored text; None: what fits
            ``max_seq_len`` after the image.
        sampling: default sampling settings for :meth:`caption`.
    """

    default_num_captions = 1  # what CogViewPipeline.caption draws per image unless told

    def __init__(
        self,
        transformer: CogViewTransformer,
        text_tokenizer: TextTokenizer,
        image_tokenizer: ImageTokenizer,
        vocab: Vocabulary,
        *,
        text_budget: int | None = None,
        sampling: SamplingConfig | None = None,
    ) -> None:
        super().__init__(transformer, text_tokenizer, image_tokenizer, vocab)
        # [EOT] ends our captions; without it (the original vocabulary) captions have a fixed length.
        self.end = vocab.token_id("[EOT]") if "[EOT]" in vocab.extra_tokens else None
        self.end_tokens = 0 if self.end is None else 1
        room = transformer.config.max_seq_len - self.prefix_length - self.end_tokens
        if room < 1:
            raise ValueError(
                f"max_seq_len={transformer.config.max_seq_len} leaves no room for text after "
                f"{self.prefix_length} image-prefix tokens"
            )
        self.text_budget = room if text_budget is None else min(text_budget, room)
        self.sampling = sampling or DEFAULT_CAPTION_SAMPLING
        self._allowed: dict[str, torch.Tensor] = {}

    @property
    def prefix_length(self) -> int:
        return self.image_tokenizer.grid_size**2 + PREFIX_OVERHEAD

    def codes(self, images: Images) -> torch.Tensor:
        """``[M, h, w]`` codes of images (PIL, resized and cropped to the tokenizer's size, or pixels)."""
        if isinstance(images, Image.Image):
            images = [images]
        elif not isinstance(images, (torch.Tensor, Sequence)) or isinstance(images, (str, bytes)):
            raise TypeError(f"images must be a PIL image, a list of them or a pixel tensor, got {type(images).__name__}")
        if not isinstance(images, torch.Tensor) and len(images) == 0:
            raise ValueError("no images given")
        return self.image_tokenizer.encode(images)

    def prefix(self, codes: torch.Tensor) -> torch.Tensor:
        """``[M, prefix_length]`` rows ``[BASE] [BOI1] codes [EOI1] [ROI1]`` for codes ``[M, h, w]``."""
        v = self.vocab
        M = codes.shape[0]
        flat = codes.reshape(M, -1).long().cpu() + v.image_range.start  # [M, h*w]

        def ids(*names: str) -> torch.Tensor:
            return torch.tensor([v.token_id(n) for n in names]).expand(M, len(names))

        return torch.cat([ids("[BASE]", "[BOI1]"), flat, ids("[EOI1]", "[ROI1]")], dim=1)

    def allowed(self, language: str) -> torch.Tensor:
        """``[V]`` bool mask of the ids a caption in ``language`` may use (its text pieces and [EOT])."""
        if language not in LANGUAGES:
            raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
        if language not in self._allowed:
            mask = torch.zeros(self.vocab.size, dtype=torch.bool)
            ids = self.vocab.text_to_unified(self.text_tokenizer.language_ids(language))
            mask[torch.as_tensor(ids, dtype=torch.long)] = True
            if self.end is not None:
                mask[self.end] = True
            self._allowed[language] = mask
        return self._allowed[language]

    # --- captioning ------------------------------------------------------------------------------

    @torch.inference_mode()
    def caption(
        self,
        images: Images,
        language: str = "zh",
        num_captions: int = 1,
        *,
        seed: int | None = None,
        sampling: SamplingConfig | None = None,
        max_tokens: int | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        dtype: torch.dtype | str | None = None,
        progress: bool = False,
        beams: int = 1,
        **overrides: Any,
    ) -> list[str]:
        """``num_captions`` captions per image in ``language``, image by image (flat list).

        Settings: ``sampling`` (else the job's defaults) with the non-None ``overrides`` among
        ``temperature``, ``top_k`` and ``top_p``. Caption j of image i samples from the stream
        :func:`image_seed` ``(seed, i * num_captions + j)``; the default settings are greedy
        (top-k 1), so ``seed`` matters only with ``top_k`` > 1.

        ``beams`` > 1: no sampling; the ``num_captions`` most likely captions of a beam search of
        that width (:meth:`beam_captions`), best first.
        """
        num_captions = positive_int("num_captions", num_captions)
        max_batch_size = positive_int("max_batch_size", max_batch_size)
        beams = positive_int("beams", beams)
        if beams > 1:
            if sampling is not None or any(v is not None for v in overrides.values()):
                raise ValueError("beam search does not sample: leave the sampling settings out with beams")
            if num_captions > beams:
                raise ValueError(f"a beam of {beams} finds at most {beams} captions, not {num_captions}")
            found = self.beam_captions(
                images, language, beams, max_tokens=max_tokens, max_batch_size=max_batch_size, dtype=dtype
            )
            return [text for texts in found for text, _ in texts[:num_captions]]
        seed = check_seed(seed)
        allowed = self.allowed(language)
        settings = resolve_sampling(self.sampling, sampling, overrides, UNGUIDED_OVERRIDES)
        if settings.guided:
            raise ValueError("captioning has no classifier-free guidance; leave guidance_scale at 1")
        steps = self._steps(max_tokens)
        rows = self.prefix(self.codes(images)).repeat_interleave(num_captions, dim=0)  # [R, P]
        seed = secrets.randbits(62) if seed is None else seed
        uniforms = image_uniforms([image_seed(seed, r) for r in range(len(rows))], steps)  # [R, steps]
        model = self._model(dtype)
        bar = progress_bar(progress, len(rows), desc="captioning")

        def run(start: int, size: int) -> list[str]:
            out = self._sample(
                model, rows[start : start + size], uniforms[start : start + size], settings, allowed
            )
            if bar is not None:
                bar.update(size)
            return out

        try:
            return [c for chunk in run_chunked(len(rows), max_batch_size, run) for c in chunk]
        finally:
            if bar is not None:
                bar.close()

    def _steps(self, max_tokens: int | None) -> int:
        """Tokens a caption may take: ``max_tokens``, else the text budget and [EOT] (the original: 20)."""
        most = self.text_budget + self.end_tokens
        default = most if self.end is not None else min(most, ORIGINAL_CAPTION_TOKENS)
        steps = default if max_tokens is None else positive_int("max_tokens", max_tokens)
        if not 1 <= steps <= most:
            raise ValueError(f"max_tokens must lie in [1, {most}], got {max_tokens}")
        return steps

    @torch.inference_mode()
    def beam_captions(
        self,
        images: Images,
        language: str = "zh",
        width: int = 4,
        *,
        max_tokens: int | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        dtype: torch.dtype | str | None = None,
        codes: torch.Tensor | None = None,
    ) -> list[list[tuple[str, float]]]:
        """For each image, up to ``width`` distinct captions with their ``log p(caption | image)``
        (over the language's pieces and [EOT]), most likely first, from a beam search of that width.

        Greedy decoding keeps one caption; a beam keeps the most likely ones, so the best is at
        least as likely as the greedy caption and the others are candidates worth re-ranking.
        Needs a vocabulary with [EOT] (our models): the original's captions have a fixed length.
        ``codes``: the images' codes ``[M, h, w]`` when the caller has them (not encoded again).
        """
        width = positive_int("width", width)
        max_batch_size = positive_int("max_batch_size", max_batch_size)
        if self.end is None:
            raise ValueError("beam search needs [EOT] in the vocabulary: the original's captions never end")
        allowed = self.allowed(language)
        first = allowed.clone()
        first[self.end] = False  # a caption has at least one piece
        steps = self._steps(max_tokens)
        rows = self.prefix(self.codes(images) if codes is None else codes)  # [M, P]
        model = self._model(dtype)

        def run(start: int, size: int) -> list[list[tuple[str, float]]]:
            state = prefill(model, rows[start : start + size], steps)
            found = beam_search(model, state, width, steps, allowed, self.end, first_allowed=first)
            out = []
            for hyps in found:
                texts: dict[str, float] = {}
                for h in hyps:  # two id sequences can spell one text: keep its best score
                    text = self.text_tokenizer.decode_unified(list(h.ids), self.vocab).strip()
                    if text and text not in texts:
                        texts[text] = h.score
                out.append(list(texts.items()) or [("", hyps[0].score)])  # never no answer
            return out

        per_call = max(1, max_batch_size // width)  # each image holds width cache rows
        return [c for chunk in run_chunked(len(rows), per_call, run) for c in chunk]

    def _sample(
        self,
        model: CogViewTransformer,
        rows: torch.Tensor,
        uniforms: torch.Tensor,
        settings: SamplingConfig,
        allowed: torch.Tensor,
    ) -> list[str]:
        """Captions of prefix ``rows`` ``[n, P]``: one engine call, ids to the host once."""
        n, steps = uniforms.shape
        eot = self.vocab.token_id("[PAD]") if self.end is None else self.end  # never sampled without [EOT]
        first = allowed.clone()
        if self.end is not None:
            first[eot] = False  # a caption has at least one piece
        # Every row has the same length: one batched prefill, each row its own sample.
        state = prefill(model, rows, steps)
        hooks = Hooks(allowed=allowed, first_allowed=first, stop_id=self.end)
        out = torch.full((n, steps), eot, dtype=torch.long, device=state.last_logits.device)  # [n, steps]
        for i, ids in enumerate(decode(model, as_rows(state), uniforms, settings, hooks)):
            out[:, i] = ids
        texts = []
        for row in out.tolist():  # the one copy to the host
            text = row[: row.index(eot)] if eot in row else row
            texts.append(self.text_tokenizer.decode_unified(text, self.vocab).strip())
        return texts

    # --- scoring ---------------------------------------------------------------------------------

    def text_ids(self, text: str) -> list[int]:
        """Unified ids of ``text`` cut to the text budget, then ``[EOT]`` (when the vocabulary has it)."""
        if not check_text("text", text).strip():
            raise ValueError("empty text: give the prompt or caption to score")
        ids = self.text_tokenizer.encode_unified(text, self.vocab, max_length=self.text_budget)
        return ids if self.end is None else ids + [self.end]

    @torch.inference_mode()
    def log_likelihoods(
        self,
        codes: torch.Tensor,
        texts: Sequence[str],
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        dtype: torch.dtype | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of pairs (image ``codes[m]``, ``texts[m]``): ``(log p(text | image) [M], tokens [M])``.

        Image-code logits are masked before the log-softmax (SPEC 3.5); ``[EOT]`` is scored as
        the end of the text, so a longer text cannot win by being a prefix.
        """
        if len(texts) != codes.shape[0]:
            raise ValueError(f"got {codes.shape[0]} images and {len(texts)} texts; pass one text per image")
        prefix = self.prefix(codes)  # [M, P]
        targets = [self.text_ids(t) for t in texts]
        lengths = torch.tensor([len(t) for t in targets])  # [M]
        T = int(lengths.max())
        pad = self.vocab.token_id("[PAD]")
        text = torch.full((len(texts), T), pad, dtype=torch.long)  # [M, T]
        for m, t in enumerate(targets):
            text[m, : len(t)] = torch.tensor(t)
        tokens = torch.cat([prefix, text], dim=1)  # [M, P + T]
        model = self._model(dtype)
        image = self.vocab.image_range

        def run(start: int, size: int) -> torch.Tensor:
            batch = tokens[start : start + size].to(self.device)  # [b, P + T]
            positions = torch.arange(batch.shape[1], device=self.device)
            logits = model(batch[:, :-1], positions[:-1])[:, prefix.shape[1] - 1 :].float()  # [b, T, V]
            logits[..., image.start : image.stop] = float("-inf")
            logp = logits.log_softmax(-1).gather(-1, batch[:, prefix.shape[1] :, None])[..., 0]  # [b, T]
            keep = torch.arange(T, device=self.device) < lengths[start : start + size, None].to(self.device)
            return (logp * keep).sum(-1).cpu()  # [b]

        return torch.cat(run_chunked(len(texts), max_batch_size, run)), lengths

    def candidate_codes(self, images: Sequence[Image.Image], codes: torch.Tensor) -> torch.Tensor:
        """The codes post-selection scores for generated ``images`` of ``codes``: the codes themselves."""
        return codes

    def score(self, text: str, images: Images, **kwargs: Any) -> list[float]:
        """``log p(text | image)`` for each image: higher means the image fits the text better."""
        codes = self.codes(images)
        scores, _ = self.log_likelihoods(codes, [text] * codes.shape[0], **kwargs)
        return scores.tolist()

    def caption_loss(self, text: str, images: Images, **kwargs: Any) -> list[float]:
        """CapLoss per image (SPEC 5): the mean cross-entropy of ``text`` given the image; lower is better."""
        codes = self.codes(images)
        scores, lengths = self.log_likelihoods(codes, [text] * codes.shape[0], **kwargs)
        return (-scores / lengths).tolist()

    def _model(self, dtype: torch.dtype | str | None) -> CogViewTransformer:
        compute = resolve_dtype(dtype, self.device)
        weights = self.transformer.tok_embeddings.weight.dtype
        if compute != weights and dtype is not None:
            raise ValueError(
                f"the caption model is loaded in {weights}; load the pipeline with dtype={compute} instead"
            )
        return self.transformer
