"""Token-space super-resolution: low-res codes condition the generation of 2x codes (SPEC 3.4).

An image is tokenised at its own size (a multiple of the tokenizer's stride, at least one window)
and magnified window by window (:func:`~cogview.data.windows.magnify_windows`): each window's
sequence is ``[ROI1] text [BASE] [BOI1] low crop [EOI1] [ROI2] [POS0] [BASE] [BOI2]`` followed by
the 2x window's codes in raster order, with positions restarting after ``[ROI2]`` (SPEC 1.2).
Codes that earlier windows already produced are fed as they are (teacher forcing, in chunks, so
they cost one forward pass per run of known codes); the others are sampled. Any image works, not
only the generator's own samples: it is simply resized to the grid and tokenised.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from cogview.checks import check_seed, check_text, positive_int
from cogview.data import sequences
from cogview.data.windows import magnify_windows
from cogview.generation.batching import image_seed, image_uniforms, progress_bar, run_chunked
from cogview.generation.components import Components
from cogview.generation.decode import Hooks, SlotInputs, as_rows, decode, prefill
from cogview.generation.sampling import UNGUIDED_OVERRIDES, SamplingConfig, resolve_sampling
from cogview.images import check_image_size, resize_center_crop
from cogview.model import CogViewTransformer
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vocab import Vocabulary

# Greedy: the 2x image is a reconstruction, and the most likely code is the sharpest guess.
DEFAULT_SR_SAMPLING = SamplingConfig(temperature=1.0, top_k=1)
DEFAULT_MAX_BATCH_SIZE = 16
# [ROI1] [BASE] [BOI1] [EOI1] [ROI2] [POS0] [BASE] [BOI2]
LAYOUT_TOKENS = sequences.LAYOUT_OVERHEAD["super_resolution"]


class WindowInputs(NamedTuple):
    """One window's model inputs: the prefix tokens and per-token inputs of the whole sequence."""

    tokens: torch.Tensor  # [n, P] through [BOI2]
    positions: torch.Tensor  # [P + s*s] ids, restarting after [ROI2]
    cells: torch.Tensor  # [P + s*s] 2-D cell id of the *next* token (sequences.sr_cells, shifted)
    sources: torch.Tensor  # [n, P + s*s, 9] low-res 3x3 neighbourhood of the *next* 2x code, -1 elsewhere


class SuperResolution(Components):
    """Upscale images 2x with a transformer trained on super-resolution window rows.

    Args:
        window: low-res codes per window side, as in training (``cogview prepare --sr-window``).
        stride: step between windows (default half a window, as the original).
        text_budget: the most prompt tokens; None: what fits ``max_seq_len``.
    """

    def __init__(
        self,
        transformer: CogViewTransformer,
        text_tokenizer: TextTokenizer,
        image_tokenizer: ImageTokenizer,
        vocab: Vocabulary,
        *,
        window: int = sequences.DEFAULT_SR_WINDOW,
        stride: int | None = None,
        text_budget: int | None = None,
        sampling: SamplingConfig | None = None,
    ) -> None:
        super().__init__(transformer, text_tokenizer, image_tokenizer, vocab)
        room = self.room(transformer.config.max_seq_len, window)
        if room < 0:
            raise ValueError(
                f"max_seq_len={transformer.config.max_seq_len} cannot hold a {window}x{window} window "
                f"and its 2x window; was the model trained with another window size?"
            )
        self.window = window
        self.stride = stride
        self.text_budget = room if text_budget is None else min(text_budget, room)
        self.sampling = sampling or DEFAULT_SR_SAMPLING

    def room(self, max_seq_len: int, window: int) -> int:
        """Text tokens that fit next to one window (negative: the window itself does not fit).

        Our models are trained on whole windows of ``max_seq_len`` tokens, so the token count is the
        bound here; the released model's positions restart at ``[ROI2]`` (OriginalSuperResolution)."""
        return max_seq_len - LAYOUT_TOKENS - window**2 - (2 * window) ** 2

    @property
    def pixels_per_code(self) -> int:
        return 2**self.image_tokenizer.config.n_down

    def input_size(self, image: Image.Image) -> int:
        """The square side an input is tokenised at: its shorter side, rounded down to whole codes."""
        side = min(image.size) // self.pixels_per_code * self.pixels_per_code
        smallest = self.window * self.pixels_per_code
        if side < smallest:
            raise ValueError(
                f"image of {image.size[0]}x{image.size[1]} px is smaller than one super-resolution window "
                f"({smallest}x{smallest} px); upscale it conventionally first"
            )
        return side

    def prepare(self, image: Image.Image, size: int) -> Image.Image:
        """The input as tokenised: resized and centre-cropped to ``size``."""
        return resize_center_crop(image, size)

    def window_plan(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """``(top, left, rows)``: each window's corner in low-res codes and the 2x rows it fills, in
        the order visited (:func:`~cogview.data.windows.magnify_windows`; whole windows)."""
        wins = magnify_windows(height, width, self.window, self.stride)
        return [(win.top, win.left, 2 * win.size) for win in wins]

    def decode_images(self, codes: torch.Tensor) -> list[Image.Image]:
        """2x codes ``[n, 2h, 2w]`` -> images."""
        return self.image_tokenizer.decode(codes)

    def text_ids(self, prompt: str | None) -> list[int]:
        """Unified ids of the optional prompt, cut to the text budget (empty: no prompt)."""
        if prompt is None or not prompt.strip():
            return []
        return self.text_tokenizer.encode_unified(prompt, self.vocab, max_length=self.text_budget)

    @torch.inference_mode()
    def upscale(
        self,
        images: Image.Image | Sequence[Image.Image],
        prompt: str | None = None,
        *,
        seed: int | None = None,
        sampling: SamplingConfig | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        progress: bool = False,
        **overrides: Any,
    ) -> list[Image.Image]:
        """Each image at twice its (square, code-aligned) size; images of one size share batches.

        Settings: ``sampling`` (else the job's defaults) with the non-None ``overrides`` among
        ``temperature``, ``top_k`` and ``top_p``.
        """
        single = isinstance(images, Image.Image)
        if not single and (not isinstance(images, Sequence) or isinstance(images, (str, bytes))):
            raise TypeError(f"images must be a PIL image or a list of them, got {type(images).__name__}")
        images = [images] if single else list(images)
        if not images:
            raise ValueError("no images given")
        for im in images:
            if not isinstance(im, Image.Image):
                raise TypeError(f"images must be PIL images, got {type(im).__name__}")
            check_image_size(*im.size)
        check_text("prompt", prompt, allow_none=True)
        max_batch_size = positive_int("max_batch_size", max_batch_size)
        settings = resolve_sampling(self.sampling, sampling, overrides, UNGUIDED_OVERRIDES)
        seed = check_seed(seed)
        seed = secrets.randbits(62) if seed is None else seed
        text = self.text_ids(prompt)
        out: list[Image.Image | None] = [None] * len(images)
        by_size: dict[int, list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(self.input_size(im), []).append(i)
        for size, index in by_size.items():
            group = [self.prepare(images[i], size) for i in index]
            upscaled = self._upscale_group(group, index, text, seed, settings, max_batch_size, progress)
            for i, im in zip(index, upscaled, strict=True):
                out[i] = im
        return [im for im in out if im is not None]

    def _upscale_group(
        self,
        images: list[Image.Image],
        index: list[int],
        text: list[int],
        seed: int,
        settings: SamplingConfig,
        max_batch_size: int,
        progress: bool,
    ) -> list[Image.Image]:
        """Upscale images of one size; image ``index[j]`` of the call draws from stream ``image_seed(seed, index[j])``."""
        # Codes live on the CPU between windows (the bookkeeping is tiny); each window's forward
        # passes move what they need to the transformer's device.
        low = self.image_tokenizer.encode(images, size=images[0].size[0]).cpu()  # [n, h, w] at their own size
        wins = self.window_plan(low.shape[1], low.shape[2])
        steps = len(wins) * (2 * self.window) ** 2
        uniforms = image_uniforms([image_seed(seed, i) for i in index], steps)  # [n, steps]
        bar = progress_bar(progress, len(index) * len(wins), desc="upscaling")

        def run(start: int, n: int) -> torch.Tensor:
            return self.magnify(
                low[start : start + n], text, wins, uniforms[start : start + n], settings, bar
            )

        try:
            high = torch.cat(run_chunked(len(index), max_batch_size, run))  # [n, 2h, 2w]
        finally:
            if bar is not None:
                bar.close()
        return self.decode_images(high)

    def magnify(
        self,
        low: torch.Tensor,
        text: list[int],
        wins: list[tuple[int, int, int]],
        uniforms: torch.Tensor,
        settings: SamplingConfig,
        bar: object = None,
    ) -> torch.Tensor:
        """2x codes ``[n, 2h, 2w]`` of low-res codes ``[n, h, w]``, window by window (``wins``: the
        :meth:`window_plan`)."""
        n, h, w = low.shape
        high = torch.zeros(n, 2 * h, 2 * w, dtype=torch.long)
        known = torch.zeros(2 * h, 2 * w, dtype=torch.bool)  # the same for every row
        size = self.window
        per_window = (2 * size) ** 2
        for k, (top, left, lines) in enumerate(wins):
            rows, cols = slice(2 * top, 2 * top + lines), slice(2 * left, 2 * left + 2 * size)
            high[:, rows, cols] = self._window(
                low[:, top : top + size, left : left + size],
                high[:, rows, cols],
                known[rows, cols],
                text,
                uniforms[:, k * per_window : k * per_window + lines * 2 * size],
                settings,
            )
            known[rows, cols] = True
            if bar is not None:
                bar.update(n)
        return high

    def _prefix(self, text: list[int], low_crop: torch.Tensor, lines: int | None = None) -> WindowInputs:
        """Tokens ``[n, P]`` and the per-token inputs of the whole sequence of one window of ``lines``
        2x rows (default: all)."""
        s = 2 * self.window
        lines = s if lines is None else lines
        template = sequences.super_resolution_window(
            np.asarray(text, dtype=np.int64), low_crop[0].numpy(), np.zeros((lines, s), np.int64), self.vocab
        )
        P = len(template.tokens) - lines * s
        crops = low_crop.reshape(low_crop.shape[0], -1) + self.vocab.image_range.start  # [n, w*w]
        head = torch.from_numpy(template.tokens[: P - 5 - crops.shape[1]].copy())
        tail = torch.from_numpy(template.tokens[P - 5 : P].copy())
        n = low_crop.shape[0]
        tokens = torch.cat([head.expand(n, -1), crops, tail.expand(n, -1)], dim=1)  # [n, P]
        # Each position is given the cell / source of the token it predicts: the next one.
        cells = sequences.sr_cells(torch.from_numpy(template.tokens)[None], self.vocab)  # [1, P + s*s]
        rows = torch.cat([tokens, torch.full((n, lines * s), self.vocab.image_range.start)], dim=1)
        sources = sequences.sr_sources(rows, self.vocab)  # [n, P + s*s, 9]; the 2x codes do not matter
        return WindowInputs(
            tokens,
            torch.from_numpy(template.positions.copy()),
            torch.cat([cells[0, 1:], cells.new_zeros(1)]),
            torch.cat([sources[:, 1:], sources.new_full((n, 1, sources.shape[-1]), -1)], dim=1),
        )

    def _window(
        self,
        low_crop: torch.Tensor,
        current: torch.Tensor,
        known: torch.Tensor,
        text: list[int],
        uniforms: torch.Tensor,
        settings: SamplingConfig,
    ) -> torch.Tensor:
        """Codes ``[n, lines, s]`` of one 2x window (``current``, ``known``: its ``lines`` rows): known
        ones kept, the others sampled in raster order."""
        n, s, lines = low_crop.shape[0], 2 * self.window, current.shape[1]
        inputs = self._prefix(text, low_crop, lines)
        config = self.transformer.config
        slot_inputs = SlotInputs(
            positions=inputs.positions,
            cells=inputs.cells if config.cell_embeddings else None,
            sources=inputs.sources if config.cell_sources else None,
        )
        image = self.vocab.image_range
        state = prefill(self.transformer, inputs.tokens, lines * s, inputs=slot_inputs)
        # Codes of earlier windows are forced (fed, not sampled); the others are sampled in raster order.
        hooks = Hooks(allowed=image, forced=current.reshape(n, -1) + image.start, forced_steps=known.reshape(-1))
        out = torch.empty(n, lines * s, dtype=torch.long, device=state.last_logits.device)  # [n, lines*s]
        for t, ids in enumerate(decode(self.transformer, as_rows(state), uniforms, settings, hooks)):
            out[:, t] = ids
        return (out - image.start).cpu().view(n, lines, s)
