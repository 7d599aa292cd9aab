"""The one decoding engine: prefill once, then fixed-shape one-token steps over a KV cache.

CogView computes the prompt once and shares it across the samples (SPEC 3.1, step 4):
:func:`prefill` writes one cache row per prompt row, :func:`expand` repeats it for the samples of
a text-to-image call (and the guidance rows), and :func:`decode` runs the steps (gpt-fast's
``prefill`` + ``decode_one_token``). Every job goes through :func:`decode`; what differs between
jobs is data, not loops (:class:`Hooks`): the ids a step may sample, the tokens a layout forces
(super-resolution's known window codes), and the id that ends a row (a caption's ``[EOT]``).
Randomness comes as per-row uniforms drawn up front, so a row's tokens do not depend on the
others. Ids stay on the device: the loop never waits for the host except for an optional "all
rows stopped" check every ``Hooks.stop_check_every`` steps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from cogview.checks import positive_int
from cogview.generation.sampling import SamplingConfig, cfg_combine, process_logits, sample_from_uniform
from cogview.generation.step import DecodeStep, SlotInputs, bucket
from cogview.model import CogViewTransformer, KVCache

__all__ = [
    "DecodeStep",
    "Hooks",
    "PromptState",
    "Rows",
    "SlotInputs",
    "as_rows",
    "decode",
    "expand",
    "prefill",
    "sample_tokens",
]


@dataclass(frozen=True)
class PromptState:
    """Prompts after :func:`prefill`: one cache row each, and what comes next.

    Attributes:
        cache: K/V of the prompts, one row per prompt; never written after prefill (it is expanded).
        last_logits: ``[P, V]`` float32 logits at each prompt's last token (the first sampled token).
        lengths: ``[P]`` prompt lengths; the next token of row p sits at slot ``lengths[p]``.
        max_new_tokens: how many tokens the cache has room for.
        inputs: per-slot model inputs the decode steps need beyond the tokens (None: positions = slots).
    """

    cache: KVCache
    last_logits: torch.Tensor
    lengths: torch.Tensor
    max_new_tokens: int
    inputs: SlotInputs | None = None

    @property
    def num_prompts(self) -> int:
        return int(self.lengths.shape[0])


@dataclass(frozen=True)
class Rows:
    """The rows one :func:`decode` call advances: ``groups`` blocks of ``N`` rows each.

    One group is the samples themselves; two are the conditional rows followed by the
    unconditional rows of classifier-free guidance (row n and row N + n are fed the same token).
    ``slots`` is ``[1]`` when every row continues at the same slot (one cheap cache write), else
    ``[groups * N]``.
    """

    cache: KVCache
    logits: torch.Tensor  # [groups * N, V]
    slots: torch.Tensor  # [1] or [groups * N]
    groups: int
    max_new_tokens: int
    inputs: SlotInputs | None = None


@dataclass(frozen=True)
class Hooks:
    """What a job changes about the steps, as data.

    Attributes:
        allowed: ids a step may sample: a contiguous range (the logits are sliced, cheapest) or a
            ``[V]`` bool mask (CogView's per-mode masking; a caption's language pieces and [EOT]).
        first_allowed: a ``[V]`` mask for the first step only (a caption has at least one piece).
        forced: ``[N, steps]`` ids fed instead of sampled where ``forced_steps`` is True (tokens a
            layout fixes: super-resolution's codes from earlier windows).
        forced_steps: ``[steps]`` bool, on the host, the same for every row. A run of forced steps
            is fed in one forward pass (it is known in advance, so it is a prefill, not a step).
        stop_id: a row that produced it produces it at every later step and is fed it (captions).
        stop_check_every: with ``stop_id``, every this many steps the loop asks the device whether
            all rows stopped (one host synchronisation) and ends early if so.
    """

    allowed: range | slice | torch.Tensor
    first_allowed: torch.Tensor | None = None
    forced: torch.Tensor | None = None
    forced_steps: torch.Tensor | None = None
    stop_id: int | None = None
    stop_check_every: int = 8


# --- prefill -----------------------------------------------------------------------------------


def _prompt_rows(prompts: Sequence[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    if isinstance(prompts, torch.Tensor) and prompts.dim() == 2:
        rows = list(prompts.long())
    else:
        rows = [torch.as_tensor(p, dtype=torch.long).reshape(-1) for p in prompts]
    if not rows:
        raise ValueError("prefill needs at least one prompt")
    if any(r.numel() == 0 for r in rows):
        raise ValueError("a prompt has no tokens; every layout starts with at least one command token")
    return rows


@torch.inference_mode()
def prefill(
    model: CogViewTransformer,
    prompts: Sequence[torch.Tensor] | torch.Tensor,
    max_new_tokens: int,
    pad_id: int = 0,
    inputs: SlotInputs | None = None,
) -> PromptState:
    """Run the prompts (1-D token tensors, or the rows of a 2-D one) once, right-padded into one
    batch, into a new cache with room for ``max_new_tokens`` more.

    Padding sits after a row's last token, so no real token attends to it, and the slots it fills
    are overwritten by that row's own generated tokens before any query can see them. ``inputs``
    gives position ids and cell inputs by slot for the whole sequence (super-resolution).
    """
    rows = _prompt_rows(prompts)
    positive_int("max_new_tokens", max_new_tokens)
    lengths = [r.numel() for r in rows]
    L = max(lengths)
    max_seq_len = model.config.max_seq_len
    given = None if inputs is None else inputs.positions  # ids by slot, e.g. restarting after [ROI2]
    if given is not None:  # the position table bounds the largest id fed, not the token count
        fed = L + max_new_tokens - 1  # the last sampled token is never fed
        if given.numel() < fed or int(given[:fed].max()) >= max_seq_len:
            raise ValueError(
                f"a prompt of {L} tokens plus {max_new_tokens} new tokens needs position ids beyond the "
                f"model's max_seq_len={max_seq_len} (or beyond the {given.numel()} given)"
            )
    elif L + max_new_tokens > max_seq_len:
        raise ValueError(
            f"a prompt of {L} tokens plus {max_new_tokens} new tokens exceeds the model's "
            f"max_seq_len={max_seq_len}; shorten the prompt to at most {max_seq_len - max_new_tokens} tokens"
        )
    device = model.tok_embeddings.weight.device
    tokens = torch.full((len(rows), L), pad_id, dtype=torch.long)  # [P, L]
    for i, r in enumerate(rows):
        tokens[i, : r.numel()] = r
    tokens = tokens.to(device)
    # The last sampled token is never fed back, so the cache needs L + max_new_tokens - 1 slots.
    cache = model.new_cache(len(rows), max_len=L + max_new_tokens - 1, device=device)
    inputs = None if inputs is None else inputs.to(device)
    slots = torch.arange(L, device=device)  # [L]; padding keeps counting (never attended)
    logits = DecodeStep(model).feed(cache, tokens, slots, inputs, kv_len=L)  # [P, L, V]
    last = torch.tensor(lengths, device=device) - 1  # [P]
    last_logits = logits[torch.arange(len(rows), device=device), last].float()  # [P, V]
    return PromptState(cache, last_logits, torch.tensor(lengths, device=device), max_new_tokens, inputs)


def expand(state: PromptState, n: int) -> Rows:
    """Rows for ``n`` samples of each prompt (prompt p -> group p), the state left untouched.

    One prompt: ``n`` samples; two: the conditional and unconditional rows of guidance.
    """
    positive_int("n", n)
    P = state.num_prompts
    slots = state.lengths[:1] if bool((state.lengths == state.lengths[0]).all()) else state.lengths
    return Rows(
        cache=state.cache.expand(n),  # rows [p0 x n, p1 x n, ...]
        logits=state.last_logits.repeat_interleave(n, dim=0),  # [P*n, V]
        slots=slots if slots.numel() == 1 else slots.repeat_interleave(n),
        groups=P,
        max_new_tokens=state.max_new_tokens,
        inputs=None if state.inputs is None else state.inputs.expand(n),
    )


def as_rows(state: PromptState) -> Rows:
    """Each prompt is one sample (captioning, super-resolution): its cache row is decoded in place."""
    same = bool((state.lengths == state.lengths[0]).all())
    return Rows(
        cache=state.cache,
        logits=state.last_logits,
        slots=state.lengths[:1] if same else state.lengths,
        groups=1,
        max_new_tokens=state.max_new_tokens,
        inputs=state.inputs,
    )


# --- steps -------------------------------------------------------------------------------------


def _restrict(logits: torch.Tensor, allowed: range | torch.Tensor) -> torch.Tensor:
    """Logits of the allowed ids only: a view for a contiguous range, -inf elsewhere for a mask."""
    if isinstance(allowed, range):
        return logits[:, allowed.start : allowed.stop]  # [B, V']
    return logits.masked_fill(~allowed, float("-inf"))  # [B, V]


def _check_allowed(
    allowed: range | slice | torch.Tensor, V: int, device: torch.device
) -> range | torch.Tensor:
    if isinstance(allowed, slice):
        allowed = range(*allowed.indices(V))
    if isinstance(allowed, range):
        if allowed.step != 1 or len(allowed) == 0 or allowed.start < 0 or allowed.stop > V:
            raise ValueError(f"allowed ids {allowed} must be a non-empty contiguous range inside [0, {V})")
        return allowed
    if allowed.dtype != torch.bool or tuple(allowed.shape) != (V,) or not bool(allowed.any()):
        raise ValueError(f"allowed must be a range of ids or a bool mask of shape ({V},) with a True")
    return allowed.to(device)


def _forced_runs(hooks: Hooks, N: int, steps: int) -> list[bool]:
    if hooks.forced_steps is None:
        return [False] * steps
    flags = hooks.forced_steps.reshape(-1).tolist()
    if len(flags) < steps or hooks.forced is None or tuple(hooks.forced.shape[:1]) != (N,):
        raise ValueError(f"forced ids must be [N={N}, steps] with forced_steps of length >= {steps}")
    return flags[:steps]


def _samples_per_group(rows: Rows, steps: int) -> int:
    if rows.groups < 1 or rows.logits.shape[0] % rows.groups:
        raise ValueError(f"{rows.logits.shape[0]} rows do not split into {rows.groups} groups")
    if not 1 <= steps <= rows.max_new_tokens:
        raise ValueError(f"need 1..{rows.max_new_tokens} steps, got {steps}")
    return rows.logits.shape[0] // rows.groups


@torch.inference_mode()
def decode(
    model: CogViewTransformer,
    rows: Rows,
    uniforms: torch.Tensor,
    config: SamplingConfig,
    hooks: Hooks,
    step: DecodeStep | None = None,
) -> Iterator[torch.Tensor]:
    """Decode ``uniforms.shape[1]`` tokens for ``N = uniforms.shape[0]`` samples; yield ``[N]`` ids per step.

    Row n takes its draw of step i from ``uniforms[n, i]``. With two groups, guidance
    (``config.guidance_scale``, even 1) combines the conditional and unconditional logits and
    min-p keeps what the conditional model finds plausible. The ids stay on the device; a
    generator that stops early (``Hooks.stop_id``) has yielded fewer than ``steps`` steps.
    ``step`` is the forward step to use (e.g. a compiled one); default: eager.

    Samples can leave between steps (a server's client went away): ``send`` the generator a
    ``[N]`` bool mask of the samples to keep instead of calling ``next``. Their rows (and guidance
    rows) leave the cache at once, and every later step yields ids of the kept samples only, in
    their order. Each row is computed on its own, so the kept samples' ids do not change. With a
    fixed-shape (compiled) step a new batch size compiles anew; the scheduler that sends masks
    runs eager steps.
    """
    N, steps = uniforms.shape
    if N < 1 or N != _samples_per_group(rows, steps):
        raise ValueError(
            f"uniforms of shape {tuple(uniforms.shape)} for {rows.logits.shape[0]} rows in {rows.groups} group(s)"
        )
    guided = rows.groups == 2
    if rows.groups > 2:
        raise ValueError(f"rows come in one group, or two (conditional, unconditional); got {rows.groups}")
    if config.guided and not guided:
        raise ValueError(
            f"guidance_scale={config.guidance_scale} needs the unconditional prompt prefilled as the "
            "second row: prefill(model, [prompt, uncond_prompt], ...)"
        )
    step = step or DecodeStep(model)
    device, V = rows.logits.device, rows.logits.shape[-1]
    allowed = _check_allowed(hooks.allowed, V, device)
    first = allowed if hooks.first_allowed is None else _check_allowed(hooks.first_allowed, V, device)
    if first is not allowed and (isinstance(allowed, range) or isinstance(first, range)):
        raise ValueError("first_allowed needs allowed and itself as [V] bool masks (a range shifts the ids)")
    offset = allowed.start if isinstance(allowed, range) else 0
    forced_flags = _forced_runs(hooks, N, steps)
    forced = None if hooks.forced is None else hooks.forced.to(device)
    uniforms = uniforms.to(device=device, dtype=torch.float32)
    stopped = torch.zeros(N, dtype=torch.bool, device=device) if hooks.stop_id is not None else None
    cache, logits, inputs = rows.cache, rows.logits, rows.inputs
    # A range of allowed ids: the steps compute only those logits (fewer output-layer rows).
    head = allowed if isinstance(allowed, range) else None
    sliced = False  # whether ``logits`` holds the allowed ids only (every step's, not the prefill's)
    base = rows.slots
    base_max = int(base.max())  # once, before the loop: the kv_len of each feed is host arithmetic
    i = 0
    while i < steps:
        if forced_flags[i]:  # a run of forced steps i .. e-1, fed together
            e = i
            while e < steps and forced_flags[e]:
                e += 1
            run = forced[:, i:e]  # [N, e - i]
            keep = None
            for j in range(e - i):  # masks sent inside a forced run apply after it
                sent = yield run[:, j]
                if sent is not None:
                    sent = torch.as_tensor(sent, dtype=torch.bool).cpu()
                    keep = sent if keep is None else keep & sent
        else:
            e = i + 1
            restricted = logits if sliced else _restrict(logits, first if i == 0 else allowed)  # [G*N, V']
            cond = restricted[:N]  # [N, V']
            combined = cfg_combine(cond, restricted[N:], config.guidance_scale) if guided else cond
            ids = sample_from_uniform(process_logits(combined, config, reference=cond), uniforms[:, i])
            if offset:
                ids = ids + offset
            if stopped is not None:
                ids = torch.where(stopped, hooks.stop_id, ids)  # [N]
                stopped = stopped | (ids == hooks.stop_id)
            keep = yield ids
            run = ids[:, None]  # [N, 1]
        if keep is not None:
            kept = _kept_samples(keep, N)
            if kept.numel() == 0:
                return
            if kept.numel() < N:
                N, uniforms, run, cache, logits, base, inputs, forced, stopped = _select_samples(
                    kept, N, rows.groups, uniforms, run, cache, logits, base, inputs, forced, stopped
                )
                base_max = int(base.max())
        if e >= steps:
            return
        if stopped is not None and e % hooks.stop_check_every == 0 and bool(stopped.all()):
            return  # the one host synchronisation, every stop_check_every steps
        fed = run if rows.groups == 1 else run.repeat(rows.groups, 1)  # [G*N, T]
        offsets = torch.arange(i, e, device=device)  # [T]
        slots = base[:, None] + offsets if base.numel() > 1 else base + offsets  # [G*N, T] or [T]
        logits = step(cache, fed, slots, inputs, kv_len=base_max + e, logit_ids=head)[:, -1]  # [G*N, V']
        sliced = head is not None
        i = e


def _kept_samples(keep: torch.Tensor | Sequence[bool], N: int) -> torch.Tensor:
    """Indices of the samples a sent mask keeps (host side: the caller's own bookkeeping)."""
    mask = torch.as_tensor(keep, dtype=torch.bool).cpu()
    if tuple(mask.shape) != (N,):
        raise ValueError(f"send a [{N}] bool mask of the samples to keep, got shape {tuple(mask.shape)}")
    return mask.nonzero().flatten()


def _select_samples(
    kept: torch.Tensor,
    N: int,
    groups: int,
    uniforms: torch.Tensor,
    run: torch.Tensor,
    cache: KVCache,
    logits: torch.Tensor,
    base: torch.Tensor,
    inputs: SlotInputs | None,
    forced: torch.Tensor | None,
    stopped: torch.Tensor | None,
) -> tuple:
    """The per-sample and per-row state of :func:`decode` for the ``kept`` samples only.

    Row r of group g belongs to sample ``r - g * N``: keeping samples keeps those rows of every group.
    """
    device = uniforms.device
    samples = kept.to(device)
    rows = torch.cat([samples + g * N for g in range(groups)])  # [G*N']
    if inputs is not None and inputs.sources is not None:
        inputs = SlotInputs(inputs.positions, inputs.cells, inputs.sources[rows])
    return (
        int(kept.numel()),
        uniforms[samples],
        run[samples],
        cache.select(rows),
        logits[rows],
        base if base.numel() == 1 else base[rows],
        inputs,
        None if forced is None else forced[samples],
        None if stopped is None else stopped[samples],
    )


def sample_tokens(
    model: CogViewTransformer,
    state: PromptState,
    uniforms: torch.Tensor,
    config: SamplingConfig,
    allowed: range | slice | torch.Tensor,
    step: DecodeStep | None = None,
) -> Iterator[torch.Tensor]:
    """Text-to-image decoding: ``uniforms.shape[0]`` samples of the prompt(s) in ``state``, only
    ``allowed`` ids (CogView's per-mode masking: inside an image, image codes only).

    ``state`` holds the conditional prompt and, for classifier-free guidance, the unconditional
    one as its second row; it is expanded (copied), so it can seed further batches.
    """
    if state.num_prompts > 2:
        raise ValueError(f"text-to-image takes one prompt, or two (conditional, unconditional); got {state.num_prompts}")
    if uniforms.dim() != 2 or uniforms.shape[0] < 1:
        raise ValueError(f"uniforms must be [N >= 1, steps], got shape {tuple(uniforms.shape)}")
    if config.guided and state.num_prompts != 2:
        raise ValueError(
            f"guidance_scale={config.guidance_scale} needs the unconditional prompt prefilled as the "
            "second row: prefill(model, [prompt, uncond_prompt], ...)"
        )
    N = uniforms.shape[0]
    if step is None or not step.compiled:
        return decode(model, expand(state, N), uniforms, config, Hooks(allowed=allowed), step)
    # A compiled step is specialised to its batch size: pad to a bucket, drop the padding rows.
    padded = bucket(N)
    uniforms = torch.cat([uniforms, uniforms[:1].expand(padded - N, -1)])  # [padded, steps]
    steps = decode(model, expand(state, padded), uniforms, config, Hooks(allowed=allowed), step)
    return (ids[:N] for ids in steps)

