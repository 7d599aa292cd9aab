"""Text-to-image for several requests at once: one prefill, one decode over all their rows.

The server's unit of work. Each request brings its prompt and the seeds of its draws; the batch
prefills every distinct prompt once (plus the empty prompt of guidance), selects one cache row
per draw and runs the one decoding engine (:func:`cogview.generation.decode.decode`) over them
all. A draw's randomness is its own stream (:func:`~cogview.generation.batching.image_uniforms`)
and its rows attend only to its own prompt, so its codes do not depend on the other requests.
Requests in one batch share their sampling settings: the logits processors take one setting.
:func:`finish` then makes each request's result as the library would (pixels, post-selection).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cogview.generation.batching import image_seed, image_uniforms, run_chunked
from cogview.generation.decode import Hooks, Rows, decode, prefill
from cogview.generation.modifiers import Split, modified_result
from cogview.generation.reranking import candidate_scores, rerank
from cogview.generation.sampling import SamplingConfig
from cogview.generation.text_to_image import DEFAULT_MAX_BATCH_SIZE, PromptResult, TextToImage, prompt_kind
from cogview.pipeline import CogViewPipeline

# Called after each decoded code with (codes decoded per draw, the [N, steps] codes so far); it
# returns, per part, whether that part is still wanted. Unwanted parts leave the batch at once
# (their cache rows are dropped); when none is wanted the batch stops.
StepCallback = Callable[[int, torch.Tensor], Sequence[bool]]


@dataclass(frozen=True)
class ImageWork:
    """One text-to-image request: everything needed to decode it and to record how it was made."""

    prompt: str
    tokens: torch.Tensor  # [T] prompt layout
    settings: SamplingConfig
    seed: int
    num_images: int
    candidates: int
    previews: bool = False  # send partial images while decoding (streamed requests)
    selection: str = "caption"  # how post-selection scores the candidates (reranking.SELECTION_SCORES)
    negative_prompt: str | None = None  # guidance's unconditional text (None: the empty prompt)
    uncond: torch.Tensor | None = None  # [T'] its layout (None: the empty prompt's)
    split: Split | None = None  # the asked prompt's modifier: ``prompt`` is then the prompt drawn
    asked: str | None = None  # with ``split``: the prompt as the client gave it

    @property
    def draws(self) -> int:
        return self.num_images * self.candidates

    @property
    def rows_per_draw(self) -> int:
        return 2 if self.settings.guided else 1

    def part(self, start: int = 0, stop: int | None = None) -> Part:
        """Draws ``[start, stop)`` (default: all) for :func:`decode_parts`; draw i is seeded by
        :func:`~cogview.generation.batching.image_seed` ``(seed, i)``, as in the library."""
        stop = self.draws if stop is None else stop
        return Part(self.tokens, [image_seed(self.seed, i) for i in range(start, stop)], self.uncond)


@dataclass(frozen=True)
class Part:
    """The draws of one request that a batch decodes: its prompt layout and one seed per draw."""

    tokens: torch.Tensor  # [T] ``[ROI1] text [BASE] [BOI1]``
    seeds: list[int]
    uncond: torch.Tensor | None = None  # [T'] guidance's unconditional row (None: the empty prompt)


@torch.inference_mode()
def decode_parts(
    t2i: TextToImage,
    parts: Sequence[Part],
    settings: SamplingConfig,
    on_step: StepCallback | None = None,
) -> list[torch.Tensor | None] | None:
    """``[n, h, w]`` codes of each part's draws, decoded together; None for a part ``on_step``
    gave up on, and None instead of the list when it gave up on all of them.

    Row layout (guided): the conditional rows of every draw, then as many unconditional rows
    (each draw's part's negative prompt, else the shared empty prompt), the two groups
    :func:`~cogview.generation.decode.decode` combines row by row. A part given
    up on leaves between two steps: the engine drops its rows, the other parts' codes stay those
    they would have been.
    """
    model = t2i.model_in(t2i.resolved_dtype(None))
    steps = t2i.num_tokens
    prompts = [p.tokens for p in parts]
    owner = torch.tensor([i for i, p in enumerate(parts) for _ in p.seeds])  # [N] prompt row per draw
    N = owner.numel()
    if settings.guided:  # each distinct unconditional row is prefilled once
        keys = [tuple((t2i.uncond_tokens() if p.uncond is None else p.uncond).tolist()) for p in parts]
        unconds = {k: len(parts) + j for j, k in enumerate(dict.fromkeys(keys))}  # layout -> prompt row
        prompts += [torch.tensor(k) for k in unconds]
        row_of = [unconds[k] for k in keys]
        owner = torch.cat([owner, torch.tensor([row_of[i] for i in owner.tolist()])])  # [2N]
    state = prefill(model, prompts, steps, pad_id=t2i.vocab.token_id("[PAD]"))
    owner = owner.to(state.lengths.device)
    lengths = state.lengths[owner]  # [G*N]
    same = bool((lengths == lengths[0]).all())
    rows = Rows(
        cache=state.cache.select(owner),
        logits=state.last_logits[owner],  # [G*N, V]
        slots=lengths[:1] if same else lengths,
        groups=2 if settings.guided else 1,
        max_new_tokens=steps,
    )
    uniforms = image_uniforms([s for p in parts for s in p.seeds], steps)  # [N, steps]
    hooks = Hooks(allowed=t2i.vocab.image_range)
    out = torch.zeros((N, steps), dtype=torch.long)  # [N, steps]
    part_of = torch.tensor([k for k, p in enumerate(parts) for _ in p.seeds])  # [N]
    alive = torch.arange(N)  # the draws still decoding, in the engine's row order
    wanted = [True] * len(parts)
    steps_left = decode(model, rows, uniforms, settings, hooks, t2i.step_for(model, False))
    keep: torch.Tensor | None = None
    for i in range(steps):
        try:
            ids = next(steps_left) if keep is None else steps_left.send(keep)
        except StopIteration:
            break
        out[alive, i] = ids.cpu()  # image codes are ids [0, image_size)
        keep = None
        if on_step is not None:
            wanted = [bool(w) for w in on_step(i + 1, out)]
            if not any(wanted):
                return None
            mask = torch.tensor(wanted)[part_of[alive]]  # [alive]
            if not bool(mask.all()):
                keep, alive = mask, alive[mask]
    g = t2i.image_tokenizer.grid_size
    codes = out.view(N, g, g).split([len(p.seeds) for p in parts])  # [n, h, w] each
    return [c if w else None for c, w in zip(codes, wanted, strict=True)]


def preview_pixels(t2i: TextToImage, codes: torch.Tensor, rows: int) -> torch.Tensor:
    """``[B, 3, H, W]`` pixels of the first ``rows`` code rows of ``codes`` ``[B, h, w]``; the rest grey.

    The decoder sees code 0 below the known rows (it needs a full grid); those pixels are then
    replaced by mid-grey so that a preview never shows content that was not sampled.
    """
    g = t2i.image_tokenizer.grid_size
    grid = codes.clone()
    grid[:, rows:] = 0
    pixels = t2i.image_tokenizer.decode_pixels(grid).cpu()  # [B, 3, H, W] in [0, 1]
    cut = pixels.shape[-2] * rows // g
    pixels[:, :, cut:] = 0.5  # mid-grey
    return pixels


def finish(pipeline: CogViewPipeline, work: ImageWork, codes: torch.Tensor) -> PromptResult:
    """``work``'s result from the codes of all its draws: pixels, then post-selection when
    ``candidates`` > 1, as :meth:`CogViewPipeline.generate_results` does it."""
    result = finish_all(pipeline, [(work, codes)])[0]
    if isinstance(result, Exception):
        raise result
    return result


def finish_all(
    pipeline: CogViewPipeline, done: Sequence[tuple[ImageWork, torch.Tensor]]
) -> list[PromptResult | Exception]:
    """:func:`finish` for the requests a batch completed: each request's pixels on their own (in
    the library's chunks), the post-selection scores of requests with the same prompt, number
    of candidates and score in one pass (a request's scores are those it gets alone, bit for bit: tested).
    A failure is returned in the place of its requests' results.
    """
    results: list[PromptResult | Exception] = []
    for work, codes in done:
        try:
            results.append(_pixels(pipeline, work, codes))
        except Exception as e:  # reported to that request's client
            results.append(e)
    groups: dict[tuple[str, int, str], list[int]] = {}
    for i, (work, _) in enumerate(done):
        if work.candidates > 1 and isinstance(results[i], PromptResult):
            groups.setdefault((work.prompt, work.candidates, work.selection), []).append(i)
    for (_, candidates, selection), members in groups.items():
        captioner = pipeline.captioner
        assert captioner is not None
        try:
            scored = [results[i] for i in members]
            scorer = pipeline.text_to_image if selection == "joint" else None
            scores = candidate_scores(scored, captioner, DEFAULT_MAX_BATCH_SIZE, scorer)  # type: ignore[arg-type]
            for i, s in zip(members, scores, strict=True):
                results[i] = rerank(results[i], captioner, candidates, DEFAULT_MAX_BATCH_SIZE, s, scorer)  # type: ignore[arg-type]
        except Exception as e:
            for i in members:
                results[i] = e
    for i, (work, _) in enumerate(done):  # modifiers apply to the kept images, as in the library
        if work.split is not None and isinstance(results[i], PromptResult):
            results[i] = modified_result(results[i], work.split, work.asked, pipeline.image_tokenizer.decode)
    return results


def _pixels(pipeline: CogViewPipeline, work: ImageWork, codes: torch.Tensor) -> PromptResult:
    t2i = pipeline.text_to_image
    assert t2i is not None
    return PromptResult(
        prompt=work.prompt,
        kind=prompt_kind(work.prompt),
        settings=work.settings,
        seed=work.seed,
        image_seeds=[image_seed(work.seed, i) for i in range(work.draws)],
        prompt_tokens=work.tokens.tolist(),
        truncated=False,
        negative_prompt=work.negative_prompt,
        codes=codes,
        # decoded in the library's chunks, so the pixels are those of cogview generate
        images=[
            im
            for chunk in run_chunked(
                len(codes),
                DEFAULT_MAX_BATCH_SIZE,
                lambda s, n: t2i.image_tokenizer.decode(codes[s : s + n]),
            )
            for im in chunk
        ],
    )


__all__ = ["ImageWork", "Part", "StepCallback", "decode_parts", "finish", "finish_all", "preview_pixels"]
