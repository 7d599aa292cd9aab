"""The server's jobs: validated requests -> work for the scheduler -> JSON-able results.

:class:`Service` checks a request and turns it into work for the
:class:`~cogview.server.scheduler.Scheduler`, which owns the model: text-to-image requests become
:class:`~cogview.server.scheduler.ImageWork` (batched with others), the other jobs a function the
worker runs between batches. Checks and image decoding happen before a request is queued, so a
bad request fails at once, however long the queue.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

import torch

from cogview.generation.editing import Editor, EditResult, pixel_mask
from cogview.generation.text_to_image import PromptResult
from cogview.pipeline import CogViewPipeline
from cogview.server import schemas
from cogview.server.batch import ImageWork
from cogview.server.codec import decode_image, encode_images

logger = logging.getLogger(__name__)


def random_seed() -> int:
    """A fresh seed that JSON clients read exactly (below 2**53), returned so a result can be redone."""
    return secrets.randbits(53)


class JobUnavailable(LookupError):
    """The loaded model folder does not serve the job an endpoint needs."""


class Service:
    """Check API requests against one :class:`CogViewPipeline` and build the scheduler's work."""

    def __init__(self, pipeline: CogViewPipeline, model_name: str = "") -> None:
        self.pipeline = pipeline
        self.model_name = model_name
        self._info = self._describe()

    def _require(self, job: str, what: str) -> None:
        if job not in self.pipeline.jobs:
            raise JobUnavailable(
                f"this model does not {what}: it serves {list(self.pipeline.jobs)} (see GET /api/info); "
                f"start cogview serve with --model FOLDER of a model that has a {job} job"
            )

    def info(self) -> dict[str, Any]:
        """What the model serves and its defaults, for clients to build their requests."""
        return self._info

    def _describe(self) -> dict[str, Any]:
        pipe = self.pipeline
        config = pipe.config()
        return {
            "model": self.model_name,
            "jobs": list(pipe.jobs),
            "sampling": config["sampling"],
            "candidates": pipe.candidates,
            "caption_candidates": pipe.caption_candidates,
            "selection": pipe.selection,
            "text_budget": config["text_budget"],
            # Modifier phrases a prompt may hold (docs/generation.md, "Modifiers"), e.g. skin tones.
            "modifiers": [
                {"name": m.name, "phrases": dict(m.phrases)}
                for m in (pipe.modifiers.modifiers if pipe.modifiers else [])
            ],
            "vocab": {**config["vocab"], "size": pipe.vocab.size},
            "image_size": pipe.image_tokenizer.config.image_size,
            "device": str(pipe.transformer.tok_embeddings.weight.device),
            "torch": torch.__version__,
            "limits": {
                "num_images": schemas.MAX_IMAGES,
                "candidates": schemas.MAX_CANDIDATES,
                "images_sampled": schemas.MAX_DRAWS,
                "prompt_chars": schemas.MAX_PROMPT_CHARS,
                "prompts": schemas.MAX_PROMPTS,
                "num_captions": schemas.MAX_CAPTIONS,
                "caption_candidates": schemas.MAX_CAPTION_CANDIDATES,
                "caption_beams": schemas.MAX_CAPTION_CANDIDATES,
                "upscale_side": schemas.MAX_UPSCALE_SIDE,
            },
        }

    def image_work(self, req: schemas.GenerateRequest, previews: bool = False) -> ImageWork:
        """One prompt's draws with their exact settings and seed; ``previews`` for streamed requests."""
        self._require("text_to_image", "generate images")
        candidates = self.pipeline.candidates if req.candidates is None else req.candidates
        schemas.check_draws(req.num_images, candidates)
        if candidates > 1:
            self._require("image_to_text", "rerank candidates (candidates > 1 needs captioning)")
        t2i = self.pipeline.text_to_image
        n_tokens = len(t2i.text_tokenizer.encode(req.prompt))
        if n_tokens > t2i.text_budget:
            raise ValueError(
                f"the prompt is {n_tokens} text tokens long; this model reads at most {t2i.text_budget}: "
                "shorten it"
            )
        t2i.prompt_tokens(req.prompt)  # refuses an empty prompt
        split = self.pipeline.modifier_of(req.prompt) if req.modifiers else None
        drawn = req.prompt if split is None else split.prompt
        tokens, _ = t2i.prompt_tokens(drawn)
        settings = t2i.settings_for(drawn, **req.sampling_overrides())
        negative = t2i.check_negative(req.negative_prompt, [settings])
        if negative is not None and len(t2i.text_tokenizer.encode(negative)) > t2i.text_budget:
            raise ValueError(
                f"the negative prompt is longer than the {t2i.text_budget} text tokens this model reads: shorten it"
            )
        return ImageWork(
            prompt=drawn,
            tokens=tokens,
            settings=settings,
            seed=random_seed() if req.seed is None else req.seed,
            num_images=req.num_images,
            candidates=candidates,
            previews=previews,
            selection=self.pipeline.selection if req.selection is None else req.selection,
            negative_prompt=negative,
            uncond=None if negative is None else t2i.uncond_tokens(negative),
            split=split,
            asked=None if split is None else req.prompt,
        )

    @staticmethod
    def generate_reply(result: PromptResult) -> dict[str, Any]:
        """The record ``cogview generate`` writes to ``generate.json``, the candidates and the PNGs."""
        pngs = encode_images(result.images)
        return {
            **result.to_dict(),
            "candidates": 1 if result.rerank is None else result.rerank["candidates"],
            "images": [{"seed": s, "png": p} for s, p in zip(result.image_seeds, pngs, strict=True)],
        }

    def caption(self, req: schemas.CaptionRequest) -> Callable[[], dict[str, Any]]:
        """Captions of one image in Chinese (zh) or English (en); greedy unless top_k > 1."""
        self._require("image_to_text", "caption images")
        image = decode_image(req.image)
        settings = req.sampling_overrides()
        seed = random_seed() if req.seed is None else req.seed

        if req.candidates is not None and req.candidates > 1:
            self._require("text_to_image", "re-rank caption candidates (the text-to-image model scores them)")

        def run() -> dict[str, Any]:
            beams = {} if req.beams is None else {"beams": req.beams}
            captions = self.pipeline.caption(
                image,
                req.language,
                req.num_captions,
                candidates=req.candidates,
                seed=seed,
                **beams,
                **settings,
            )
            return {"captions": captions, "language": req.language, "seed": seed}

        return run

    def score(self, req: schemas.ScoreRequest) -> Callable[[], dict[str, Any]]:
        """Caption likelihood of each prompt for each image (CogView's reranking score)."""
        self._require("image_to_text", "score images (scoring needs captioning)")
        images = [decode_image(d, f"images[{i}]") for i, d in enumerate(req.images)]

        def run() -> dict[str, Any]:
            results = []
            for text in req.texts:
                scores = self.pipeline.score(text, images)
                ranking = sorted(range(len(images)), key=lambda i: -scores[i])
                loss = self.pipeline.caption_loss(text, images)
                results.append({"prompt": text, "scores": scores, "caption_loss": loss, "ranking": ranking})
            best_prompt = [
                max(range(len(results)), key=lambda k: results[k]["scores"][i]) for i in range(len(images))
            ]
            return {"results": results, "best_prompt": best_prompt}

        return run

    def upscale(self, req: schemas.UpscaleRequest) -> Callable[[], dict[str, Any]]:
        """The image at twice its size, by super-resolution in token space."""
        self._require("super_resolution", "upscale images")
        image = decode_image(req.image)
        sr = self.pipeline.super_resolution
        side = sr.input_size(image)  # refuses images smaller than one window, with a message
        if side > schemas.MAX_UPSCALE_SIDE:
            raise ValueError(
                f"the image is {image.size[0]}x{image.size[1]} px; this server upscales images of at most "
                f"{schemas.MAX_UPSCALE_SIDE} px a side (larger ones take minutes on a CPU): shrink or crop it first"
            )
        settings = req.sampling_overrides()

        def run() -> dict[str, Any]:
            big = self.pipeline.upscale(image, req.prompt, seed=req.seed, **settings)
            (png,) = encode_images([big])
            return {"png": png, "width": big.size[0], "height": big.size[1], "seed": req.seed}

        return run

    def edit(self, req: schemas.EditRequest) -> Callable[[], dict[str, Any]]:
        """``pipe.edit`` of one image: inpaint, complete, outpaint or vary it from the prompt."""
        self._require("text_to_image", "edit images (editing samples with the text-to-image model)")
        image = decode_image(req.image)
        region = req.region()
        if req.mask is not None:
            region["mask"] = decode_image(req.mask, "mask").convert("L")
            pixel_mask(region["mask"], image.size)  # a mask of another size fails now, not after the queue
        seed = random_seed() if req.seed is None else req.seed
        options = {"grow": req.grow, "candidates": req.candidates, "select": req.select, "seed": seed}
        options["negative_prompt"] = req.negative_prompt
        editor = Editor(self.pipeline.text_to_image, self.pipeline.captioner)  # what pipe.edit runs

        def run() -> dict[str, Any]:
            try:
                result = editor.run(image, req.prompt, **region, **options, **req.sampling_overrides())
            except TypeError as e:  # a wrong argument type is the client's error too
                raise ValueError(str(e)) from e
            return self.edit_reply(result)

        return run

    @staticmethod
    def edit_reply(result: EditResult) -> dict[str, Any]:
        """The edited PNG, the settings and seed used, and which code cells were sampled."""
        (png,) = encode_images([result.image])
        width, height = result.image.size
        regenerated = result.regenerate.int().tolist()
        return {**result.to_dict(), "png": png, "width": width, "height": height, "regenerated": regenerated}
