"""Train the CogView transformer on token shards: seeded batches, guarded steps, exact resume.

Everything a step depends on is either saved in the checkpoint (weights, AdamW and loss-scaler
state, global RNG states for dropout, metric accumulators) or a pure function of the config and
the step: the learning rate (warmup + cosine, SPEC 4.3), the rows of each micro-batch (a seeded
permutation per epoch, indexed by the global sample position) and caption dropout (a generator
seeded by (seed, step)). So a run resumed from its latest checkpoint, even after a SIGKILL,
replays bit for bit what the uninterrupted run would have done on the same machine and threads.
Steps whose loss or gradient is NaN/inf are skipped and counted (SPEC 4.2); too many in a row stop
the run with :class:`TrainingDiverged`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cogview.data.sequences import drop_caption, positions_and_mask, text_token_mask
from cogview.data.shards import ShardMixture, TokenShards, open_data
from cogview.model import CogViewTransformer
from cogview.serialization import write_json
from cogview.training.checkpoint import (
    checkpoint_dirs,
    latest_checkpoint,
    load_state,
    save_checkpoint,
    set_rng_state,
)
from cogview.training.config import TrainConfig
from cogview.training.objective import loss_weights, next_token_loss
from cogview.training.optim import lr_at, param_groups, set_lr

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "train_config.json"
LOSS_PLOT_NAME = "loss.png"
# Written next to config.json + model.safetensors: the vocabulary and the tokenizers' fingerprints
# the model was trained with, so a pipeline can refuse to pair it with other tokenizers.
MODEL_INFO_NAME = "cogview.json"
# Manifest entries that fix what the token ids mean and which rows a batch holds.
_DATA_IDENTITY = ("seq_len", "vocab", "text_tokenizer", "image_tokenizer", "total_rows", "tasks")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDiverged(RuntimeError):
    """Raised after ``max_bad_steps`` consecutive steps with a NaN/inf loss or gradient."""


# --- batches ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One micro-batch, shifted for next-token prediction: every tensor is ``[B, T]`` with T = L - 1."""

    inputs: torch.Tensor  # int64 tokens[:, :-1]
    targets: torch.Tensor  # int64 tokens[:, 1:]
    positions: torch.Tensor  # int64 position ids of the inputs
    loss_mask: torch.Tensor  # float 1 where the target is a real token (not [PAD])
    text_mask: torch.Tensor  # bool True where the input is text or a command (SPEC 4.2)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in self.__dict__.values()))

    @property
    def n_tokens(self) -> int:
        return self.inputs.numel()


def make_batch(tokens: torch.Tensor, vocab: Any, drop: torch.Tensor | None = None) -> Batch:
    """Token rows ``[B, L]`` -> a shifted :class:`Batch`; rows with ``drop`` True lose their caption."""
    if drop is not None and bool(drop.any()):
        tokens = drop_caption(tokens, drop, vocab)  # [B, L]
    positions, mask = positions_and_mask(tokens, vocab)  # [B, L] each
    inputs = tokens[:, :-1]  # [B, T]
    return Batch(
        inputs=inputs,
        targets=tokens[:, 1:],
        positions=positions[:, :-1],
        loss_mask=mask[:, 1:],
        text_mask=text_token_mask(inputs, vocab),
    )


class BatchSource:
    """The micro-batches of every step as a pure function of (seed, step, micro-step).

    Sample ``p = (step * grad_accum + micro) * batch_size + j`` of the run is row
    ``perm_e[p mod N]`` of epoch ``e = p // N``, where ``perm_e`` is a permutation seeded by
    (seed, e): every row is seen once per epoch and resuming needs only the step. Caption
    dropout is drawn per optimizer step from a generator seeded by (seed, step), so gradient
    accumulation does not change which sequences lose their caption.
    """

    def __init__(self, shards: TokenShards | ShardMixture, cfg: TrainConfig) -> None:
        self.shards = shards
        self.vocab = shards.vocab
        self.seed, self.batch_size, self.grad_accum = cfg.seed, cfg.batch_size, cfg.grad_accum
        self.caption_dropout = cfg.caption_dropout
        self._perms: dict[int, np.ndarray] = {}  # a cache; the result never depends on it

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self.seed, epoch, 0xC06])
            self._perms[epoch] = rng.permutation(len(self.shards))
        return self._perms[epoch]

    def indices(self, step: int, micro: int) -> np.ndarray:
        """Row indices of micro-batch ``micro`` of optimizer step ``step``."""
        n = len(self.shards)
        start = (step * self.grad_accum + micro) * self.batch_size
        samples = np.arange(start, start + self.batch_size, dtype=np.int64)
        epochs, offsets = samples // n, samples % n
        return np.array([self._permutation(int(e))[o] for e, o in zip(epochs, offsets, strict=True)])

    def caption_drops(self, step: int) -> torch.Tensor:
        """Bool ``[grad_accum * batch_size]``: which sequences of ``step`` train with an empty caption."""
        size = self.grad_accum * self.batch_size
        if self.caption_dropout <= 0:
            return torch.zeros(size, dtype=torch.bool)
        seed = int(np.random.SeedSequence([self.seed, step, 0xD20]).generate_state(1)[0])
        g = torch.Generator().manual_seed(seed)
        return torch.rand(size, generator=g) < self.caption_dropout

    def step_batches(self, step: int) -> list[Batch]:
        """All micro-batches of optimizer step ``step`` (CPU tensors)."""
        drops = self.caption_drops(step).view(self.grad_accum, self.batch_size)
        return [
            make_batch(torch.from_numpy(self.shards.rows(self.indices(step, m))), self.vocab, drops[m])
            for m in range(self.grad_accum)
        ]


# --- one optimizer step -------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step did; sums are over its micro-batches (see :func:`next_token_loss`)."""

    loss: float
    image_sum: float
    image_count: int
    text_sum: float
    text_count: int
    grad_norm: float
    tokens: int
    skipped: str | None = None  # why the step was skipped (NaN/inf), None if it was taken


@contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Autocast to bf16/fp16 for ``precision`` (SPEC 4.4 uses fp16); fp32 runs as is."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision]):
        yield


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[Batch],
    *,
    text_loss_weight: float = 1.0,
    grad_clip: float = 0.0,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
) -> StepResult:
    """Forward/backward every micro-batch, clip, and step, unless a loss or gradient is NaN/inf.

    The loss of each micro-batch is divided by the summed loss weight of the whole step, so
    ``grad_accum`` micro-batches of ``b`` rows give the gradient of one batch of ``grad_accum * b``.
    A skipped step leaves parameters and optimizer state untouched (a ``scaler`` still lowers
    its scale on overflow, as dynamic loss scaling does).
    """
    device = next(model.parameters()).device
    batches = [b.to(device) for b in batches]
    total_weight = sum(loss_weights(b.loss_mask, b.text_mask, text_loss_weight).sum() for b in batches)
    tokens = sum(b.n_tokens for b in batches)
    optimizer.zero_grad(set_to_none=True)
    loss = torch.zeros((), device=device)
    sums = torch.zeros(4, device=device)  # image_sum, image_count, text_sum, text_count
    for b in batches:
        with autocast(device, precision):
            logits = model(b.inputs, b.positions)  # [B, T, V]
        out = next_token_loss(logits, b.targets, b.loss_mask, b.text_mask, text_loss_weight, total_weight)
        if not torch.isfinite(out.loss):
            optimizer.zero_grad(set_to_none=True)
            return StepResult(
                float(out.loss.detach()), math.nan, 0, math.nan, 0, math.nan, tokens, "non-finite loss"
            )
        (scaler.scale(out.loss) if scaler is not None else out.loss).backward()
        loss += out.loss.detach()
        sums += torch.stack([out.image_sum, out.image_count, out.text_sum, out.text_count]).float()
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    finite = bool(torch.isfinite(grad_norm))
    if scaler is not None:
        scaler.step(optimizer)  # skips the update itself when the unscaled gradients hold inf/NaN
        scaler.update()
    elif finite:
        optimizer.step()
    image_sum, image_count, text_sum, text_count = sums.tolist()
    return StepResult(
        loss=float(loss),
        image_sum=image_sum,
        image_count=int(image_count),
        text_sum=text_sum,
        text_count=int(text_count),
        grad_norm=float(grad_norm),
        tokens=tokens,
        skipped=None if finite else "non-finite gradient",
    )


# --- the run --------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available; use device=cpu or auto")
    return torch.device(name)


def data_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest entries a checkpoint must agree with to resume on these shards.

    Folder paths are left out (shards may move between a run and its resume); a mixture of
    folders is identified by each source's rows, repeat count and prepare settings, in order.
    """
    identity = {k: manifest.get(k) for k in _DATA_IDENTITY}
    if "mixture" in manifest:
        identity["mixture"] = [{k: v for k, v in m.items() if k != "path"} for m in manifest["mixture"]]
    return identity


def model_info(manifest: dict[str, Any], step: int) -> dict[str, Any]:
    """Contents of ``cogview.json``: what the model's token ids mean and how it was trained."""
    return {
        "format": "cogview-transformer",
        "step": step,
        "vocab": manifest["vocab"],
        "text_tokenizer": manifest["text_tokenizer"],
        "image_tokenizer": manifest["image_tokenizer"],
        "seq_len": manifest["seq_len"],
        "tasks": manifest.get("tasks"),
        "layouts": manifest.get("layouts"),
    }


def save_model_folder(model: CogViewTransformer, directory: Path, info: dict[str, Any]) -> None:
    """``config.json`` + ``model.safetensors`` (``CogViewTransformer.from_pretrained``) + ``cogview.json``."""
    model.save_pretrained(directory)
    write_json(directory / MODEL_INFO_NAME, info)


class _Metrics:
    """Sums over the steps since the last metrics row; they go into checkpoints for exact resume."""

    KEYS = ("steps", "loss", "image_sum", "image_count", "text_sum", "text_count", "grad_norm")

    def __init__(self, state: dict[str, float] | None = None) -> None:
        self.sums = dict(state) if state else dict.fromkeys(self.KEYS, 0.0)
        self.tokens, self.since = 0, time.perf_counter()

    def add(self, r: StepResult) -> None:
        self.tokens += r.tokens
        if r.skipped:
            return
        for key, value in (
            ("steps", 1),
            ("loss", r.loss),
            ("image_sum", r.image_sum),
            ("image_count", r.image_count),
            ("text_sum", r.text_sum),
            ("text_count", r.text_count),
            ("grad_norm", r.grad_norm),
        ):
            self.sums[key] += value

    def row(self, step: int, lr: float, skipped: int, extra: dict[str, Any]) -> dict[str, Any]:
        s, now = self.sums, time.perf_counter()

        def mean(total: str, count: str) -> float | None:
            return s[total] / s[count] if s[count] else None

        row = {
            "step": step,
            "loss": mean("loss", "steps"),
            "image_loss": mean("image_sum", "image_count"),
            "text_loss": mean("text_sum", "text_count"),
            "lr": lr,
            "grad_norm": mean("grad_norm", "steps"),
            "tokens_per_s": self.tokens / max(now - self.since, 1e-9),
            "skipped_steps": skipped,
            **extra,
        }
        self.sums = dict.fromkeys(self.KEYS, 0.0)
        self.tokens, self.since = 0, now
        return row


def _rewind_metrics(path: Path, step: int) -> None:
    """Keep the rows up to ``step`` (a killed run may have logged past its last checkpoint)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if row.get("step", math.inf) <= step:
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``OUT/metrics.jsonl``."""
    path = Path(out_dir) / METRICS_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
    on_model: Callable[[CogViewTransformer], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a transformer on ``cfg.data``; writes everything under ``out_dir``.

    Outputs: ``checkpoints/step_N/`` (atomic, the last ``keep_last``), ``metrics.jsonl``,
    ``train_config.json``, ``loss.png`` and, once ``cfg.steps`` are done, ``model/`` (loadable with
    :meth:`CogViewTransformer.from_pretrained`, plus ``cogview.json``).

    Args:
        resume: continue from the latest checkpoint in ``out_dir`` (same config, same shards).
        max_steps: stop after this step as if killed (a checkpoint is written); the schedule
            still targets ``cfg.steps``.
        on_model: called with the model before training, e.g. to register hooks.

    Returns:
        A summary: final step, whether training finished, last logged losses, skipped steps.

    Raises:
        TrainingDiverged: after ``cfg.max_bad_steps`` consecutive NaN/inf steps.
    """
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, Path(out_dir), resume, max_steps, progress, on_model)
    finally:
        torch.set_num_threads(threads)


def _train(
    cfg: TrainConfig,
    out: Path,
    resume: bool,
    max_steps: int | None,
    progress: bool,
    on_model: Callable[[CogViewTransformer], None] | None,
) -> dict[str, Any]:
    started = time.perf_counter()
    if max_steps is not None and max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    device = resolve_device(cfg.device)
    shards = open_data(cfg.data)
    model_cfg = cfg.transformer_config(shards.vocab.size, shards.seq_len)
    identity = data_identity(shards.manifest)

    ckpt = latest_checkpoint(out) if resume else None
    if resume and ckpt is None:
        log.warning("--resume given but %s has no checkpoint; starting from scratch", out)
    if not resume and checkpoint_dirs(out):
        raise ValueError(f"{out} already holds checkpoints; pass --resume to continue, or choose a new --out")

    torch.manual_seed(cfg.seed)
    state: dict[str, Any] = {}
    if ckpt is None and cfg.init_from:
        model = CogViewTransformer.from_pretrained(Path(cfg.init_from).expanduser())
        if model.config != model_cfg:
            raise ValueError(
                f"init_from {cfg.init_from} holds a model with config {model.config.to_dict()}, but this run "
                f"builds {model_cfg.to_dict()}; set model to the same architecture"
            )
    elif ckpt is None:
        model = CogViewTransformer(model_cfg)
    else:
        state = load_state(ckpt)
        diff = cfg.resume_mismatches(state.get("train_config", {}))
        if diff:
            raise ValueError(
                f"{ckpt} was written with a different config ({', '.join(diff)} differ); "
                "resume with the config of the run (see train_config.json)"
            )
        stored = state.get("data") or {}
        # Keys a checkpoint does not record (written by an older cogview) are not compared.
        differ = [k for k in identity if k in stored and stored[k] != identity[k]]
        if differ:
            raise ValueError(
                f"the shards in {cfg.data} are not the ones {ckpt} was trained on ({', '.join(differ)} "
                "differ); resume with the original shards"
            )
        model = CogViewTransformer.from_pretrained(ckpt)
    model.to(device).train()
    if on_model is not None:
        on_model(model)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True
    )
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    start, skipped_total, bad_in_a_row = 0, 0, 0
    metrics = _Metrics()
    if state:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None:
            scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
        skipped_total, bad_in_a_row = int(state["skipped_steps"]), int(state["bad_in_a_row"])
        metrics = _Metrics(state["metrics"])
        set_rng_state(state["rng"])  # last: nothing above may draw from the global RNGs after it
        log.info("resumed from %s at step %d", ckpt, start)

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_NAME, cfg.to_dict())
    metrics_path = out / METRICS_NAME
    if start == 0:
        metrics_path.unlink(missing_ok=True)
    else:
        _rewind_metrics(metrics_path, start)
    source = BatchSource(shards, cfg)
    end = min(cfg.steps, max_steps) if max_steps else cfg.steps
    log.info(
        "training %s parameters on %d rows of %d tokens from %s, steps %d..%d on %s (%s)",
        f"{model.num_parameters():,}",
        len(shards),
        shards.seq_len,
        shards.path,
        start,
        end,
        device,
        cfg.precision,
    )
    saved_step = start if ckpt is not None else -1

    def save(step: int) -> None:
        nonlocal saved_step
        train_state = {
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "train_config": cfg.to_dict(),
            "data": identity,
            "skipped_steps": skipped_total,
            "bad_in_a_row": bad_in_a_row,
            "metrics": metrics.sums,
            "sequences_seen": step * cfg.sequences_per_step,  # the data position (batches are f(step))
            "lr": lr_at(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio),  # the schedule is f(step)
        }
        info = model_info(shards.manifest, step)
        save_checkpoint(out, step, lambda d: save_model_folder(model, d, info), train_state, cfg.keep_last)
        saved_step = step

    bar = tqdm(range(start, end), initial=start, total=end, desc="train", unit="step", disable=not progress)
    for step in bar:
        lr = lr_at(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio)
        set_lr(optimizer, lr)
        result = train_step(
            model,
            optimizer,
            source.step_batches(step),
            text_loss_weight=cfg.text_loss_weight,
            grad_clip=cfg.grad_clip,
            precision=cfg.precision,
            scaler=scaler,
        )
        metrics.add(result)
        if result.skipped:
            skipped_total += 1
            bad_in_a_row += 1
            log.warning("step %d skipped: %s (loss %s)", step + 1, result.skipped, result.loss)
        else:
            bad_in_a_row = 0
        done = step + 1
        diverged = bad_in_a_row >= cfg.max_bad_steps
        # No partial row at a --max-steps stop: its sums go into the checkpoint, so a resumed run
        # logs exactly the rows of an uninterrupted one.
        if done % cfg.log_every == 0 or done == cfg.steps or diverged:
            extra = {"loss_scale": scaler.get_scale()} if scaler is not None else {}
            row = metrics.row(done, lr, skipped_total, extra)
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if row["loss"] is not None:
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
        if diverged:
            bar.close()
            _plot(out)
            last = latest_checkpoint(out)
            raise TrainingDiverged(
                f"stopped at step {done}: the last {bad_in_a_row} steps had a NaN/inf "
                f"{result.skipped.split()[-1]} ({skipped_total} skipped in all). Lower lr (now {cfg.lr}), "
                f"keep grad_clip on, use precision=fp32 or bf16, or keep sandwich_ln/pb_relax_alpha on; "
                + (f"the last good checkpoint is {last}." if last else "no checkpoint was written yet.")
            )
        if (done % cfg.checkpoint_every == 0 or done == end) and done != saved_step:
            save(done)
    bar.close()

    finished = end == cfg.steps
    if finished:
        save_model_folder(model, out / "model", model_info(shards.manifest, end))
    _plot(out)
    rows = read_metrics(out)
    last = rows[-1] if rows else {}
    summary = {
        "step": end,
        "finished": finished,
        "loss": last.get("loss"),
        "image_loss": last.get("image_loss"),
        "text_loss": last.get("text_loss"),
        "skipped_steps": skipped_total,
        "seconds": round(time.perf_counter() - started, 2),
        "model": str(out / "model") if finished else None,
    }
    log.info("training %s at step %d: %s", "done" if finished else "stopped", end, summary)
    return summary


def _plot(out: Path) -> None:
    from cogview.plotting import plot_loss_curves  # PIL only; imported when needed

    rows = read_metrics(out)
    if any(r.get("loss") is not None for r in rows):  # all steps skipped: nothing to draw
        plot_loss_curves(rows, out / LOSS_PLOT_NAME, title=f"training loss ({out.name})")


__all__ = [
    "Batch",
    "BatchSource",
    "StepResult",
    "TrainingDiverged",
    "autocast",
    "make_batch",
    "model_info",
    "read_metrics",
    "resolve_device",
    "train",
    "train_step",
]
