"""The released CogView's jobs, for converted weights (``"semantics": "original"`` in pipeline.json).

Our own models keep our jobs; a folder written by ``cogview convert-original`` is served by these
subclasses instead, which do what the released code does with the same weights (SPEC 2.1,
3.1-3.6; ``generate_samples.py``, ``generation/magnify.py``, ``scripts/*.sh``):

- inputs are resized to 256 and centre-cropped as ``torchvision`` ``Resize`` + ``CenterCrop`` do
  (bilinear, the longer side truncated), outputs min-max stretched as ``save_image(normalize=True)``;
- prompts may hold the original's query syntax (command-token names such as ``[BASE]``);
- captions are 20 tokens drawn from all 50,000 text ids (no ``[EOT]``, no language filter);
- super-resolution visits the nine windows in the original order, filling 18/30/30/30/30/30/32/32/32
  rows, with the room checked on the largest position id and the cache length;
- post-selection re-encodes the images as saved (stretched, JPEG) instead of reusing the codes.

docs/original_weights.md has one table per job: what is exact and what is equal in distribution.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import torch
from PIL import Image

from cogview.generation.batching import run_chunked
from cogview.generation.captioning import Captioner, Images
from cogview.generation.sampling import SamplingConfig
from cogview.generation.super_resolution import SuperResolution
from cogview.generation.text_to_image import TextToImage
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vocab import COMMAND_TOKENS, Vocabulary

SEMANTICS = ("cogview", "original")
# The scripts' sampling: scripts/text2image.sh, image2text.sh (8 captions), super_resolution.sh.
ORIGINAL_SAMPLING = {
    "text_to_image": SamplingConfig(temperature=1.0, top_k=200),
    "image_to_text": SamplingConfig(temperature=1.0, top_k=200),
    "super_resolution": SamplingConfig(temperature=1.02, top_k=200),
}
ORIGINAL_NUM_CAPTIONS = 8
# generation/magnify.py: (window row, window column, rows filled) in the order visited.
ORIGINAL_SR_WINDOWS = ((0, 0, 18), (0, 1, 30), (0, 2, 30), (1, 1, 30), (1, 0, 30), (1, 2, 30), (2, 0, 32), (2, 1, 32), (2, 2, 32))  # fmt: skip
ORIGINAL_SR_WINDOW = 16  # low-res codes per window side; the low-res grid is 2 windows wide (32)
ORIGINAL_MEMORY = 2048  # the released inference keeps at most this many cached positions
JPEG_QUALITY = 75  # PIL's default, which torchvision's save_image used for the .jpg files


# --- images ------------------------------------------------------------------------------------


def original_resize_crop(image: Image.Image, size: int) -> Image.Image:
    """``Resize(size)`` then ``CenterCrop(size)`` as torchvision 0.8-0.9 did on PIL images.

    The shorter side becomes ``size`` and the longer ``int(size * long / short)`` (truncated), by
    PIL's bilinear filter; the crop offset is ``round((side - size) / 2)`` (Python's rounding).
    An RGBA image is resized with its alpha (PIL premultiplies) and the alpha then dropped, as the
    original's ``img[:-1]``; other modes are converted to RGB first.
    """
    image = image if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    w, h = image.size
    if not ((w <= h and w == size) or (h <= w and h == size)):
        ow, oh = (size, int(size * h / w)) if w < h else (int(size * w / h), size)
        image = image.resize((ow, oh), Image.Resampling.BILINEAR)
    w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size)).convert("RGB")


def stretched(pixels: torch.Tensor) -> list[Image.Image]:
    """Pixels ``[B, 3, H, W]`` -> images min-max stretched one by one, as ``save_image(normalize=True)``
    wrote each sample (SPEC 3.3): ``(x - min) / max(max - min, 1e-5)``, then ``* 255 + 0.5`` truncated."""
    out = []
    for x in pixels.detach().float().cpu():
        low, high = float(x.min()), float(x.max())
        x = (x.clamp(low, high) - low) / max(high - low, 1e-5)
        arr = x.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
        out.append(Image.fromarray(arr, "RGB"))
    return out


def as_saved(image: Image.Image) -> Image.Image:
    """The image as the original read it back from its ``.jpg`` (PIL JPEG at quality 75)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


# --- query syntax --------------------------------------------------------------------------------


def parse_query(query: str, text_tokenizer: TextTokenizer, vocab: Vocabulary) -> list[int]:
    """Unified ids of a query in the original syntax (``UnifiedTokenizer.parse_query``, SPEC 2.1).

    The query is split on ASCII spaces; a part that names a command token (``[BASE]``, ``[BOI1]``,
    ...) becomes its id, ``[MASK]`` becomes -1 and ``[MASK]*N`` N of them (tokens to generate);
    the other parts are re-joined by spaces and encoded run by run. ``[Image]path`` parts are
    refused: pass the image itself to the job.
    """
    ids: list[int] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            ids.extend(text_tokenizer.encode_unified(" ".join(run), vocab))
            run.clear()

    for part in query.split(" "):
        if part in COMMAND_TOKENS:
            flush()
            ids.append(-1 if part == "[MASK]" else vocab.token_id(part))
        elif part.startswith("[MASK]*"):
            count = part[len("[MASK]*") :]
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"{part!r}: [MASK]*N needs a positive count N")
            flush()
            ids.extend([-1] * int(count))
        elif part.startswith("[Image"):
            raise ValueError(f"{part[:40]!r}: [Image]path parts are not read here; pass the image to the job")
        else:
            run.append(part)
    flush()
    return ids


# --- jobs ---------------------------------------------------------------------------------------


def query_text_ids(
    query: str, text_tokenizer: TextTokenizer, vocab: Vocabulary, budget: int | None = None
) -> list[int]:
    """A prompt in the query syntax as the ids of a layout's text slot (cut to ``budget`` tokens)."""
    ids = parse_query(query, text_tokenizer, vocab)
    if -1 in ids:
        raise ValueError("[MASK] marks tokens to generate; a prompt here is text (and command tokens)")
    return ids if budget is None else ids[:budget]


class OriginalTextToImage(TextToImage):
    """Text-to-image as ``generate_samples.py``: ``[ROI1] query [BASE] [BOI1]`` then 1024 codes.

    The prompt is parsed in the query syntax (command tokens allowed; ``[MASK]`` is refused, as
    the image is what is generated); images are min-max stretched as the original saved them.
    Longer prompts are cut to the text budget with a warning (the original skipped them).
    """

    def prompt_tokens(self, prompt: str) -> tuple[torch.Tensor, bool]:
        ids = self._query_ids(prompt)
        truncated = len(ids) > self.text_budget
        if truncated:
            warnings.warn(
                f"prompt {prompt[:40]!r}... has {len(ids)} tokens, more than the model's text budget of "
                f"{self.text_budget}; keeping the first {self.text_budget} (the original skipped such prompts)",
                UserWarning,
                stacklevel=3,
            )
            ids = ids[: self.text_budget]
        v = self.vocab
        prefix = [v.token_id("[ROI1]"), *ids, v.token_id("[BASE]"), v.token_id("[BOI1]")]
        return torch.tensor(prefix, dtype=torch.long), truncated

    def _query_ids(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("empty prompt: give some text to draw")
        return query_text_ids(prompt, self.text_tokenizer, self.vocab)

    def _images(self, codes: torch.Tensor, max_batch_size: int) -> list[Image.Image]:
        def decode(start: int, size: int) -> list[Image.Image]:
            return stretched(self.image_tokenizer.decode_pixels(codes[start : start + size]))

        return [im for chunk in run_chunked(len(codes), max_batch_size, decode) for im in chunk]


class OriginalCaptioner(Captioner):
    """Captioning as ``image2text.sh``: 20 tokens from all text ids, images read as the original did.

    ``language`` is ignored (the released model has no language switch); scoring (post-selection)
    re-reads candidate images as saved: stretched, JPEG, resized and cropped.
    """

    default_num_captions = ORIGINAL_NUM_CAPTIONS

    def allowed(self, language: str) -> torch.Tensor:
        """Every text id, whatever the language: the original's mask after ``[EOI1]`` (SPEC 3.1)."""
        mask = torch.zeros(self.vocab.size, dtype=torch.bool)
        mask[self.vocab.text_range.start : self.vocab.text_range.stop] = True
        return mask

    def codes(self, images: Images) -> torch.Tensor:
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, Sequence) and images and all(isinstance(im, Image.Image) for im in images):
            images = [original_resize_crop(im, self.image_tokenizer.image_size) for im in images]
        return super().codes(images)

    def text_ids(self, text: str) -> list[int]:
        """Scored text in the query syntax (post-selection's ``[ROI1] {}``), cut to the text budget."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("empty text: give the prompt or caption to score")
        return query_text_ids(text, self.text_tokenizer, self.vocab, self.text_budget)

    def candidate_codes(self, images: Sequence[Image.Image], codes: torch.Tensor) -> torch.Tensor:
        """Post-selection's codes: the images re-read from their JPEG files and re-encoded (SPEC 3.5)."""
        return self.codes([as_saved(im) for im in images])


class OriginalSuperResolution(SuperResolution):
    """Super-resolution as ``magnify``: a 256 px input (32x32 codes) to 64x64 codes, nine windows."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["window"] = ORIGINAL_SR_WINDOW
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        grid = self.image_tokenizer.grid_size
        if grid != 2 * ORIGINAL_SR_WINDOW:
            raise ValueError(
                f"the original super-resolution magnifies a {2 * ORIGINAL_SR_WINDOW}x{2 * ORIGINAL_SR_WINDOW} "
                f"code grid; this image tokenizer gives {grid}x{grid}"
            )

    def room(self, max_seq_len: int, window: int) -> int:
        """Text tokens that fit: the largest position id (``[ROI2]`` keeps its index, the codes after
        it restart at 1) must have a row in the position table, and the whole window must fit the
        released inference's cache of 2048 positions."""
        head = 1 + 2 + window**2 + 2  # [ROI1] .. [BASE] [BOI1] low [EOI1] [ROI2]; text in between
        by_positions = max_seq_len - head  # [ROI2] at index text + head - 1 < max_seq_len
        if 3 + (2 * window) ** 2 >= max_seq_len:  # the last code's position id
            return -1
        return min(by_positions, ORIGINAL_MEMORY - head - 3 - (2 * window) ** 2)

    def text_ids(self, prompt: str | None) -> list[int]:
        """The optional prompt in the query syntax (``[ROI1] {} [BASE] ...``), cut to the text budget."""
        if prompt is None or not prompt.strip():
            return []
        return query_text_ids(prompt, self.text_tokenizer, self.vocab, self.text_budget)

    def input_size(self, image: Image.Image) -> int:
        return self.image_tokenizer.image_size

    def prepare(self, image: Image.Image, size: int) -> Image.Image:
        return original_resize_crop(image, size)

    def window_plan(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """``(top, left, rows)`` in low-res codes and high-res rows, in the original order."""
        half = ORIGINAL_SR_WINDOW // 2
        return [(half * i, half * j, rows) for i, j, rows in ORIGINAL_SR_WINDOWS]

    def decode_images(self, codes: torch.Tensor) -> list[Image.Image]:
        return stretched(self.image_tokenizer.decode_pixels(codes))
