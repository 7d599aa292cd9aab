"""The editing job: force the codes to keep, sample the others from the prompt, keep a candidate.

The image is tokenised (for outpainting: placed on the canvas first), the codes to keep are forced
at their raster positions (:attr:`~cogview.generation.decode.Hooks.forced`) and the others are
sampled from the text-to-image prompt with guidance, as in
:class:`~cogview.generation.text_to_image.TextToImage`. A raster-order model cannot see the known
codes after a hole while it fills it, so several candidates can be drawn and one kept by a score.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from cogview.checks import check_seed, positive_int
from cogview.generation.batching import image_seed, image_uniforms
from cogview.generation.captioning import Captioner
from cogview.generation.decode import Hooks, decode, expand, prefill
from cogview.generation.editing import regions
from cogview.generation.sampling import SamplingConfig
from cogview.generation.text_to_image import TextToImage
from cogview.images import check_image_size, resize_center_crop

# Which region argument belongs to which mode; the mode is implied by the one given.
REGION_MODES = {
    "mask": "inpaint",
    "box": "inpaint",
    "rows": "complete",
    "prefix": "complete",
    "shift": "outpaint",
    "pad": "outpaint",
    "strength": "vary",
}
MODES = ("inpaint", "complete", "outpaint", "vary")
# How candidates are scored (docs/editing.md, "Post-selection"): "suffix" is the proposal,
# the teacher-forced log-likelihood of the known codes after the first hole under the prompt;
# "caption" is CogView's self-reranking, log p(prompt | edited image) under the caption model.
SELECTIONS = ("suffix", "caption")
# Candidates drawn, and how they are chosen, when the caller names none (benchmarks/editing.py, 100
# test items per cell, docs/editing.md): completing digits from their top third, the best of 4 by
# the caption model read 94/95% (en/zh) against 86/83% for one sample (a completion has no known
# codes after the hole, so the suffix cannot choose). Recolouring gained nothing from either
# criterion (89/95% one sample; 89/93% suffix, 89/90% caption), so the other modes draw one.
DEFAULT_CANDIDATES = {"inpaint": 1, "complete": 4, "outpaint": 1, "vary": 1}
DEFAULT_SELECT = {"inpaint": "suffix", "complete": "caption", "outpaint": "suffix", "vary": "suffix"}
# Code cells an inpainting hole grows by when the caller names none. The codes beside a hole are
# encoded from pixels that reach into it (the encoder's receptive field), so they carry the old
# content's colour; one more ring lifted recolouring from 71/75% to 89/95% (en/zh) on the shipped
# model (docs/editing.md, "What we tried").
DEFAULT_GROW = 1
MAX_EDIT_CANDIDATES = 16


@dataclass(frozen=True)
class EditLayout:
    """What an edit starts from: its mode, the canvas codes and the cells to sample."""

    mode: str
    codes: torch.Tensor  # [h, w] the input's codes, placed on the canvas (0 where outpainted)
    regenerate: torch.Tensor  # [h, w] bool: the codes that are sampled


@dataclass(frozen=True)
class EditResult:
    """One edit: the kept image and codes, what was regenerated, and every candidate's score."""

    prompt: str
    mode: str
    seed: int
    settings: SamplingConfig
    source_codes: torch.Tensor  # [h, w] canvas codes the edit starts from (see EditLayout)
    regenerate: torch.Tensor  # [h, w] bool: the codes that were sampled
    candidate_codes: torch.Tensor  # [C, h, w]
    select: str
    scores: list[float]  # the selection score of each candidate (higher is kept)
    kept: int
    image: Image.Image
    negative_prompt: str | None = None  # guidance's unconditional text, when not the empty one

    @property
    def codes(self) -> torch.Tensor:
        """``[h, w]`` codes of the kept candidate."""
        return self.candidate_codes[self.kept]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (everything but the codes and the image)."""
        return {
            "prompt": self.prompt,
            "mode": self.mode,
            "seed": self.seed,
            "settings": self.settings.to_dict(),
            "regenerated_codes": int(self.regenerate.sum()),
            "total_codes": self.regenerate.numel(),
            "candidates": len(self.scores),
            "select": self.select,
            "scores": self.scores,
            "kept": self.kept,
            **({"negative_prompt": self.negative_prompt} if self.negative_prompt else {}),
        }


def region_mode(mode: str | None, **region: Any) -> str:
    """The mode of the one region argument given (checked against ``mode`` if that is given too)."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode={mode!r}; choose one of {list(MODES)}")
    given = sorted(k for k, v in region.items() if v is not None)
    if len(given) != 1:
        choices = sorted(k for k, m in REGION_MODES.items() if mode in (None, m))
        raise ValueError(f"give exactly one region argument of {choices}; got {given or 'none'}")
    implied = REGION_MODES[given[0]]
    if mode is not None and mode != implied:
        raise ValueError(f"mode {mode!r} does not take {given[0]} (that is {implied!r})")
    return implied


class Editor:
    """Edit images in token space with a :class:`TextToImage` job's model, tokenizers and defaults.

    ``captioner`` scores candidates for ``select="caption"`` (the pipeline passes its own).
    """

    def __init__(self, t2i: TextToImage, captioner: Captioner | None = None) -> None:
        self.t2i = t2i
        self.captioner = captioner

    def layout(
        self,
        image: Image.Image,
        *,
        mode: str | None = None,
        grow: int | None = None,
        seed: int = 0,
        **region: Any,
    ) -> EditLayout:
        """The canvas codes and the ``[g, g]`` cells to sample, from the one region argument given
        (the keys of :data:`REGION_MODES`; None counts as not given).

        ``grow`` widens an inpainting hole by that many code cells (None:
        :data:`DEFAULT_GROW`; the codes beside a hole also carry some of what it held, as the
        tokenizer's encoder sees across cell edges). Other modes take none.
        """
        unknown = sorted(set(region) - set(REGION_MODES))
        if unknown:
            raise TypeError(f"unknown region argument(s) {unknown}; the regions are {sorted(REGION_MODES)}")
        mode = region_mode(mode, **region)
        if grow is not None and mode != "inpaint":
            raise ValueError(f"grow widens an inpainting hole; mode {mode!r} has none to widen")
        grow = DEFAULT_GROW if grow is None else grow
        if isinstance(grow, bool) or not isinstance(grow, int) or grow < 0:
            raise ValueError(f"grow={grow!r} must be an int >= 0 (code cells added around the hole)")
        if not isinstance(image, Image.Image):
            raise TypeError(f"image must be a PIL image, got {type(image).__name__}")
        check_image_size(*image.size)
        tok = self.t2i.image_tokenizer
        g, size = tok.grid_size, tok.image_size
        name, value = next((k, v) for k, v in region.items() if v is not None)
        if name == "pad":
            canvas, regen = regions.pad_canvas(image, value, size, g)
            return EditLayout(mode, tok.encode([canvas])[0].cpu(), regen)
        codes = tok.encode([resize_center_crop(image, size)])[0].cpu()  # [g, g]
        if name == "shift":
            return EditLayout(mode, *regions.shift_canvas(codes, value, size // g))
        if name in ("rows", "prefix"):
            return EditLayout(mode, codes, getattr(regions, f"{name}_grid")(value, g))
        if name == "strength":
            return EditLayout(mode, codes, regions.strength_grid(value, g, seed))
        pixels = (
            regions.box_mask(value, image.size) if name == "box" else regions.pixel_mask(value, image.size)
        )
        regen = regions.grid_mask(pixels, size, g)
        if not bool(regen.any()):
            raise ValueError(
                "the mask selects no pixel of the (cropped) image: nothing to regenerate; mask a region"
            )
        return EditLayout(mode, codes, regions.grow_grid(regen, grow))

    def run(
        self,
        image: Image.Image,
        prompt: str,
        mask: Any = None,
        *,
        mode: str | None = None,
        box: Any = None,
        rows: Any = None,
        prefix: Any = None,
        shift: Any = None,
        pad: Any = None,
        strength: Any = None,
        grow: int | None = None,
        candidates: int | None = None,
        select: str | None = None,
        seed: int | None = None,
        sampling: SamplingConfig | None = None,
        negative_prompt: str | None = None,
        **overrides: Any,
    ) -> EditResult:
        """Edit ``image`` (resized and centre-cropped to the tokenizer's size, converted to RGB).

        Exactly one region argument: ``mask``/``box`` (inpaint), ``rows``/``prefix`` (complete),
        ``shift``/``pad`` (outpaint), ``strength`` (vary); ``mode`` may name it too. An inpainting
        hole grows by ``grow`` code cells (None: :data:`DEFAULT_GROW`). An all-ones mask is plain
        text-to-image. The output decodes the whole code grid, so kept pixels are
        the tokenizer's reconstruction, not the input's. ``candidates`` samples are drawn and the
        best by ``select`` (:data:`SELECTIONS`) kept (None: the mode's :data:`DEFAULT_CANDIDATES`
        and :data:`DEFAULT_SELECT`). ``negative_prompt``: guidance's unconditional row draws it
        instead of the empty prompt (as in text-to-image; needs guidance on). Same inputs and seed,
        same image.
        """
        seed = check_seed(seed)
        seed = secrets.randbits(62) if seed is None else seed
        if select is not None and select not in SELECTIONS:
            raise ValueError(f"select={select!r}; choose one of {list(SELECTIONS)}")
        region = {"mask": mask, "box": box, "rows": rows, "prefix": prefix}
        region.update(shift=shift, pad=pad, strength=strength)
        plan = self.layout(image, mode=mode, grow=grow, seed=seed, **region)
        select, candidates = self._selection(plan.mode, select, candidates)
        tokens, _ = self.t2i.prompt_tokens(prompt)
        settings = self.t2i.settings_for(prompt, sampling, **overrides)
        negative_prompt = self.t2i.check_negative(negative_prompt, [settings])
        uncond = self.t2i.uncond_tokens(negative_prompt)
        flat = plan.regenerate.reshape(-1)  # [S]
        model = self.t2i.model_in(self.t2i.resolved_dtype(None))
        codes = self._sample(
            model, tokens, uncond, plan.codes.reshape(-1), flat, settings, seed, candidates
        )  # [C, S]
        g = self.t2i.image_tokenizer.grid_size
        scores = self._scores(model, tokens, prompt, codes, flat, select)  # [C]
        kept = int(scores.argmax())
        return EditResult(
            prompt=prompt,
            mode=plan.mode,
            seed=seed,
            settings=settings,
            source_codes=plan.codes,
            regenerate=plan.regenerate,
            candidate_codes=codes.view(-1, g, g),
            select=select,
            scores=scores.tolist(),
            kept=kept,
            image=self.t2i.image_tokenizer.decode(codes[kept].view(1, g, g))[0],
            negative_prompt=negative_prompt,
        )

    def _selection(self, mode: str, select: str | None, candidates: int | None) -> tuple[str, int]:
        """``select`` and ``candidates`` with the mode's defaults filled in. Without a caption model
        a mode whose default is the caption (completion) falls back to one sample."""
        default = DEFAULT_SELECT[mode]
        if default == "caption" and self.captioner is None:
            default = "suffix"
        select = default if select is None else select
        if candidates is None:
            candidates = DEFAULT_CANDIDATES[mode] if select == DEFAULT_SELECT[mode] else 1
        candidates = positive_int("candidates", candidates, most=MAX_EDIT_CANDIDATES)
        if select == "caption" and self.captioner is None and candidates > 1:
            raise ValueError("select='caption' needs a caption model: build Editor(t2i, captioner)")
        return select, candidates

    def _sample(
        self,
        model: Any,
        tokens: torch.Tensor,
        uncond: torch.Tensor,
        source: torch.Tensor,
        regen: torch.Tensor,
        settings: SamplingConfig,
        seed: int,
        candidates: int,
    ) -> torch.Tensor:
        """``[C, S]`` codes: the source's where ``regen`` is False (forced), sampled elsewhere."""
        steps, image = source.numel(), self.t2i.vocab.image_range
        prompts = [tokens, uncond] if settings.guided else [tokens]
        state = prefill(model, prompts, steps, pad_id=self.t2i.vocab.token_id("[PAD]"))
        uniforms = image_uniforms([image_seed(seed, i) for i in range(candidates)], steps)  # [C, S]
        forced = (source + image.start).expand(candidates, -1)  # [C, S] vocabulary ids
        hooks = Hooks(allowed=image, forced=forced, forced_steps=~regen)
        out = torch.empty(candidates, steps, dtype=torch.long)  # [C, S]
        for t, ids in enumerate(decode(model, expand(state, candidates), uniforms, settings, hooks)):
            out[:, t] = ids.cpu() - image.start
        return out

    def _scores(
        self,
        model: Any,
        tokens: torch.Tensor,
        prompt: str,
        codes: torch.Tensor,
        regen: torch.Tensor,
        select: str,
    ) -> torch.Tensor:
        """``[C]`` scores of the candidates (zeros for one: nothing to choose)."""
        C = codes.shape[0]
        if C == 1:
            return torch.zeros(1)
        if select == "caption":
            g = self.t2i.image_tokenizer.grid_size
            return self.captioner.log_likelihoods(codes.view(C, g, g), [prompt] * C)[0]
        first = int(regen.nonzero()[0])
        suffix = ~regen & (torch.arange(regen.numel()) > first)  # [S] known codes after the first hole
        if not bool(suffix.any()):
            return torch.zeros(C)
        return (code_log_likelihoods(model, tokens, codes, self.t2i.vocab.image_range) * suffix).sum(-1)


@torch.inference_mode()
def code_log_likelihoods(model: Any, tokens: torch.Tensor, codes: torch.Tensor, image: range) -> torch.Tensor:
    """``[C, S]`` teacher-forced ``log p(code_s | prompt, codes_<s)`` of each candidate's codes."""
    device = model.tok_embeddings.weight.device
    codes = codes.to(device)  # candidates come from the device's sampler, the prompt from the host
    seq = torch.cat([tokens.to(device).expand(codes.shape[0], -1), codes + image.start], dim=1)  # [C, L + S]
    positions = torch.arange(seq.shape[1] - 1, device=device)
    L = tokens.numel()
    logits = model(seq[:, :-1], positions)[:, L - 1 :, image.start : image.stop].float()  # [C, S, K]
    return logits.log_softmax(-1).gather(-1, codes[..., None])[..., 0].cpu()  # [C, S]
