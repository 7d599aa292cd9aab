"""Request bodies of the HTTP API, with the bounds that keep one request's work small.

Strict and closed (``extra="forbid"``): a misspelt field or a string where a number belongs is
refused with a message instead of silently taking a default, so a client learns at once what it
got wrong. Sampling fields left out (None) take the model's defaults, as in the CLI.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cogview.generation.editing import region_mode
from cogview.generation.sampling import SAMPLING_FIELDS

# One request must stay a few seconds of CPU work: these bound what a client can ask for.
MAX_IMAGES = 16  # images returned by one generate call, and images sent to caption/score
MAX_CANDIDATES = 8  # post-selection candidates per returned image
MAX_DRAWS = 64  # num_images * candidates: images sampled by one call
MAX_PROMPT_CHARS = 500
MAX_PROMPTS = 16
MAX_CAPTIONS = 8
MAX_CAPTION_CANDIDATES = 16  # caption candidates re-ranked per image
MAX_SEED = 2**53 - 1  # JSON-safe: a JavaScript client reads and sends it exactly
MAX_IMAGE_CHARS = 8_000_000  # base64 text of one image (about 6 MB of PNG)
MAX_UPSCALE_SIDE = 64  # shorter side (whole codes) of an image to upscale: 64 px is 4x the work of 32

Text = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="Chinese or English")]
ImageData = Annotated[
    str, Field(min_length=1, max_length=MAX_IMAGE_CHARS, description="base64 PNG/JPEG; a data: URL works")
]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Sampling(Request):
    """Per-call sampling settings; None keeps the model's default for the job."""

    temperature: float | None = Field(None, gt=0, le=10)
    top_k: int | None = Field(None, ge=0, le=100_000)
    top_p: float | None = Field(None, ge=0, le=1)

    def sampling_overrides(self) -> dict[str, Any]:
        """The request's sampling fields (this one's and a subclass's), as the jobs' keyword overrides."""
        return self.model_dump(include=set(SAMPLING_FIELDS))


class GenerateRequest(Sampling):
    prompt: Text
    negative_prompt: str | None = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description="what to steer away from: guidance's unconditional text (needs guidance_scale > 1)",
    )
    modifiers: bool = Field(
        True,
        description="a prompt holding a modifier phrase of the model's (a skin tone) is drawn as its base "
        "with the codes mapped; false: drawn as given",
    )
    num_images: int = Field(4, ge=1, le=MAX_IMAGES)
    seed: Seed | None = None  # None: a random one, returned with the images
    guidance_scale: float | None = Field(None, ge=0, le=20)
    min_p: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="drop codes the prompt-conditioned model (before guidance) finds implausible",
    )
    candidates: int | None = Field(
        None,
        ge=1,
        le=MAX_CANDIDATES,
        description="keep the best caption score of N (post-selection); None: the model's default, 1: off",
    )
    selection: Literal["caption", "joint"] | None = Field(
        None,
        description="how candidates are scored: caption = log p(prompt | image) (CogView's), joint = that "
        "plus the generator's log p(image | prompt); None: the model's default",
    )

    @model_validator(mode="after")
    def _bounded_work(self) -> GenerateRequest:
        if self.candidates is not None:  # the model's default is checked by the service
            check_draws(self.num_images, self.candidates)
        return self


def check_draws(num_images: int, candidates: int) -> None:
    """Refuse a request that would sample more than :data:`MAX_DRAWS` images."""
    if num_images * candidates > MAX_DRAWS:
        raise ValueError(
            f"num_images x candidates = {num_images * candidates} images to sample; "
            f"this server samples at most {MAX_DRAWS} per request: lower one of them"
        )


class CaptionRequest(Sampling):
    image: ImageData
    language: Literal["zh", "en"] = "zh"
    num_captions: int = Field(1, ge=1, le=MAX_CAPTIONS)
    candidates: int | None = Field(
        None,
        ge=1,
        le=MAX_CAPTION_CANDIDATES,
        description="above 1: the best of the candidates most likely captions (a beam search; with "
        "top_k above 1: the greedy caption and candidates-1 sampled ones), re-ranked with the "
        "text-to-image model (one caption); None: the model's default",
    )
    beams: int | None = Field(
        None,
        ge=1,
        le=MAX_CAPTION_CANDIDATES,
        description="above 1: a beam search of this width returns the num_captions most likely "
        "captions (no sampling fields, no candidates); None: greedy",
    )
    seed: Seed | None = None

    @model_validator(mode="after")
    def _one_caption_when_reranked(self) -> CaptionRequest:
        if self.candidates is not None and self.candidates > 1 and self.num_captions != 1:
            raise ValueError("candidates above 1 choose one caption: leave num_captions at 1")
        if self.beams is not None and self.beams > 1:
            if any(v is not None for v in self.sampling_overrides().values()):
                raise ValueError("beam search does not sample: leave the sampling fields out with beams")
            if self.candidates is not None and self.candidates > 1:
                raise ValueError("candidates come from a beam of their own width: leave beams out")
            if self.num_captions > self.beams:
                raise ValueError(f"a beam of width {self.beams} finds at most {self.beams} captions")
        return self


class ScoreRequest(Request):
    prompt: Text | None = None
    prompts: list[Text] | None = Field(None, min_length=1, max_length=MAX_PROMPTS)
    images: list[ImageData] = Field(min_length=1, max_length=MAX_IMAGES)

    @model_validator(mode="after")
    def _one_prompt_field(self) -> ScoreRequest:
        if (self.prompt is None) == (self.prompts is None):
            raise ValueError("give either prompt (one text) or prompts (a list of texts), not both")
        return self

    @property
    def texts(self) -> list[str]:
        return [self.prompt] if self.prompt is not None else list(self.prompts or [])


class UpscaleRequest(Sampling):
    image: ImageData
    prompt: Text | None = None  # optional description of the image
    seed: Seed = 0


Pixels = Annotated[int, Field(ge=-4096, le=4096)]  # no image side exceeds 4096 (cogview.images)
# JSON arrays (strict mode takes no list for a tuple): ``[left, top, right, bottom]``, ``[dx, dy]``.
Sides = Annotated[list[Pixels], Field(min_length=4, max_length=4)]


class EditRequest(Sampling):
    """``pipe.edit``'s arguments: the image, the prompt and exactly one region (its keyword names)."""

    image: ImageData
    prompt: Text
    mask: ImageData | None = Field(None, description="base64 PNG of the image's size; non-zero = regenerate")
    box: Sides | None = Field(None, description="left, top, right, bottom px (right, bottom exclusive)")
    rows: int | None = Field(None, ge=1, le=4096, description="completion: code rows kept from the top")
    prefix: int | None = Field(None, ge=1, le=2**24, description="completion: codes kept in raster order")
    shift: Annotated[list[Pixels], Field(min_length=2, max_length=2)] | None = Field(
        None, description="outpainting: dx, dy px on the canvas (right, down positive)"
    )
    pad: Pixels | Sides | None = Field(
        None, description="outpainting: px of new canvas, one or left, top, right, bottom"
    )
    strength: float | None = Field(None, description="variations: fraction of codes re-sampled, in (0, 1]")
    grow: int | None = Field(None, ge=0, le=64, description="inpainting: code cells the hole widens by")
    candidates: int | None = Field(None, ge=1, le=MAX_CANDIDATES, description="None: the mode's default")
    select: Literal["suffix", "caption"] | None = None  # editing.SELECTIONS
    seed: Seed | None = None  # None: a random one, returned with the image
    guidance_scale: float | None = Field(None, ge=0, le=20)
    negative_prompt: str | None = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description="what to steer away from: guidance's unconditional text (needs guidance_scale > 1)",
    )

    @model_validator(mode="after")
    def _one_region(self) -> EditRequest:
        region_mode(None, **self.region())  # pipe.edit's own check and message
        return self

    def region(self) -> dict[str, Any]:
        """The region arguments as ``pipe.edit`` takes them (the mask still base64)."""
        return {name: getattr(self, name) for name in REGION_FIELDS}


REGION_FIELDS = ("mask", "box", "rows", "prefix", "shift", "pad", "strength")


# Body model of each POST endpoint, for error messages that list the fields it takes.
REQUESTS: dict[str, type[Request]] = {
    "/api/generate": GenerateRequest,
    "/api/caption": CaptionRequest,
    "/api/score": ScoreRequest,
    "/api/upscale": UpscaleRequest,
    "/api/edit": EditRequest,
}
