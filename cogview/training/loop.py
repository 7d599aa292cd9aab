"""Train the CogView transformer on token shards: seeded batches, guarded steps, exact resume.

Everything a step depends on is either saved in the checkpoint (weights, AdamW and loss-scaler
state, global RNG states for dropout, metric accumulators) or a pure function of the config and
the step: the learning rate (warmup + cosine, SPEC 4.3), the rows of each micro-batch (a seeded
permutation per epoch, indexed by the global sample position) and caption dropout (a generator
seeded by (seed, step)). So a run resumed from its latest checkpoint, even after a SIGKILL,
replays bit for bit what the uninterrupted run would have done on the same machine and threads.
Steps whose loss or gradient is NaN/inf are skipped and counted (SPEC 4.2); too many in a row stop
the run with :class:`TrainingDiverged`. With a distributed ``strategy`` (ddp, fsdp, deepspeed under
torchrun) each rank computes its block of every global batch and the losses match the
single-process run; checkpoints are then sharded (cogview.training.sharded_checkpoint).
"""

from __future__ import annotations

import dataclasses
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

import torch
from tqdm.auto import tqdm

from cogview.data.shards import open_data
from cogview.model import CogViewTransformer, TransformerConfig
from cogview.serialization import CONFIG_NAME as MODEL_CONFIG_NAME
from cogview.serialization import write_json
from cogview.training import distributed
from cogview.training.batches import Batch, BatchSource, make_batch
from cogview.training.checkpoint import (
    MODEL_INFO_NAME,
    checkpoint_dirs,
    latest_checkpoint,
    load_state,
    save_checkpoint,
    set_rng_state,
)
from cogview.training.config import TrainConfig
from cogview.training.distributed import DistEnv, resolve_device
from cogview.training.metrics import METRICS_NAME, Metrics, read_metrics, rewind_metrics
from cogview.training.objective import loss_weights, next_token_loss
from cogview.training.optim import lr_at
from cogview.training.parallel import Local
from cogview.training.sharded_checkpoint import is_sharded, save_sharded

log = logging.getLogger(__name__)

CONFIG_NAME = "train_config.json"
LOSS_PLOT_NAME = "loss.png"
# Manifest entries that fix what the token ids mean and which rows a batch holds.
_DATA_IDENTITY = ("seq_len", "vocab", "text_tokenizer", "image_tokenizer", "total_rows", "tasks")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDiverged(RuntimeError):
    """Raised after ``max_bad_steps`` consecutive steps with a NaN/inf loss or gradient."""


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
    replica: Local | None = None,
) -> StepResult:
    """Forward/backward every micro-batch, clip, and step, unless a loss or gradient is NaN/inf.

    The loss of each micro-batch is divided by the summed loss weight of the whole step, so
    ``grad_accum`` micro-batches of ``b`` rows give the gradient of one batch of ``grad_accum * b``.
    A skipped step leaves parameters and optimizer state untouched (a ``scaler`` still lowers
    its scale on overflow, as dynamic loss scaling does).

    ``replica`` (cogview.training.parallel) is the data-parallel wrapper of ``model`` and
    ``optimizer``; ``batches`` are then this rank's blocks, the normaliser and the returned sums
    cover all ranks, and a NaN/inf loss skips the step on every rank together.
    """
    rep = replica if replica is not None else Local.of(model, optimizer)
    config = rep.module.config  # super-resolution models of ours take cell inputs
    uses_cells, uses_sources = config.cell_embeddings > 0, config.cell_sources
    device = next(model.parameters()).device
    batches = [b.to(device) for b in batches]
    total_weight = rep.all_reduce(
        sum(loss_weights(b.loss_mask, b.text_mask, text_loss_weight).sum() for b in batches)
    )
    tokens = sum(b.n_tokens for b in batches) * rep.env.world_size
    rep.zero_grad()
    loss = torch.zeros((), device=device)
    sums = torch.zeros(4, device=device)  # image_sum, image_count, text_sum, text_count
    for i, b in enumerate(batches):
        with rep.accumulating(last=i == len(batches) - 1):
            with autocast(device, precision):
                logits = model(
                    b.inputs,
                    b.positions,
                    cells=b.cells if uses_cells else None,
                    sources=b.sources if uses_sources else None,
                )  # [B, T, V]
            out = next_token_loss(logits, b.targets, b.loss_mask, b.text_mask, text_loss_weight, total_weight)
            if not rep.distributed and not torch.isfinite(out.loss):  # ranks must all run the backward
                rep.zero_grad()
                return StepResult(
                    float(out.loss.detach()), math.nan, 0, math.nan, 0, math.nan, tokens, "non-finite loss"
                )
            rep.backward(out.loss, scaler)
        loss += out.loss.detach()
        sums += torch.stack([out.image_sum, out.image_count, out.text_sum, out.text_count]).float()
    if rep.distributed:
        totals = rep.all_reduce(torch.cat([loss.view(1), sums]))  # [5]
        loss, sums = totals[0], totals[1:]
    grad_norm = rep.clip_grad_norm(grad_clip, scaler)
    finite = bool(torch.isfinite(grad_norm))
    loss_finite = bool(torch.isfinite(loss))
    rep.step(scaler, finite and loss_finite)
    if not loss_finite:
        rep.zero_grad()
        return StepResult(float(loss), math.nan, 0, math.nan, 0, math.nan, tokens, "non-finite loss")
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


def _save_full_model(rep: Local, directory: Path, info: dict[str, Any], env: DistEnv) -> None:
    """The model folder from a (possibly sharded) replica: gathered on rank 0, written there; collective."""
    if not env.distributed:
        save_model_folder(rep.module, directory, info)
        return
    weights = rep.full_model_state()
    if env.is_main:
        with torch.device("meta"):
            model = CogViewTransformer(rep.module.config)
        model.load_state_dict(weights, strict=True, assign=True)
        save_model_folder(model, directory, info)
    distributed.barrier(env)


def init_model(path: Path, model_cfg: TransformerConfig) -> CogViewTransformer:
    """The model of ``path`` as the start of a run building ``model_cfg``.

    The architectures must match, except that the run may add the super-resolution cell inputs
    the source lacks (``cell_embeddings``, ``cell_sources``): they start from their fresh
    initialisation.
    """
    source = CogViewTransformer.from_pretrained(path)
    if source.config == model_cfg:
        return source
    added = {
        k: getattr(model_cfg, k)
        for k in ("cell_embeddings", "cell_sources")
        if getattr(source.config, k) != getattr(model_cfg, k) and not getattr(source.config, k)
    }
    if dataclasses.replace(source.config, **added) != model_cfg:
        raise ValueError(
            f"init_from {path} holds a model with config {source.config.to_dict()}, but this run "
            f"builds {model_cfg.to_dict()}; set model to the same architecture (only cell_embeddings / cell_sources may be added)"
        )
    model = CogViewTransformer(model_cfg)
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    if unexpected or not all(k.startswith(("cell_embeddings.", "cell_sources.")) for k in missing):
        raise ValueError(f"init_from {path}: unexpected weights {unexpected}, missing {missing}")
    return model


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
    env = distributed.setup(cfg.strategy, cfg.device)
    try:
        return _train(cfg, Path(out_dir), resume, max_steps, progress, on_model, env)
    finally:
        distributed.teardown(env)
        torch.set_num_threads(threads)


def _train(
    cfg: TrainConfig,
    out: Path,
    resume: bool,
    max_steps: int | None,
    progress: bool,
    on_model: Callable[[CogViewTransformer], None] | None,
    env: DistEnv,
) -> dict[str, Any]:
    started = time.perf_counter()
    if max_steps is not None and max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    device = env.device
    main = env.is_main  # rank 0 alone writes metrics, plots, progress and the model folder
    shards = open_data(cfg.data)
    model_cfg = cfg.transformer_config(shards.vocab.size, shards.seq_len)
    identity = data_identity(shards.manifest)

    ckpt = distributed.broadcast_object(latest_checkpoint(out) if resume else None, env)
    if resume and ckpt is None:
        log.warning("--resume given but %s has no checkpoint; starting from scratch", out)
    if not resume and checkpoint_dirs(out):
        raise ValueError(f"{out} already holds checkpoints; pass --resume to continue, or choose a new --out")

    torch.manual_seed(cfg.seed)
    state: dict[str, Any] = {}
    if ckpt is None and cfg.init_from:
        model = init_model(Path(cfg.init_from).expanduser(), model_cfg)
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
        # A sharded checkpoint's weights are loaded into the wrapped model by the replica.
        model = (
            CogViewTransformer(model_cfg) if is_sharded(ckpt) else CogViewTransformer.from_pretrained(ckpt)
        )
    rep = distributed.wrap(model, cfg, env, on_model, ckpt, state)
    optimizer = rep.optimizer
    scaler = rep.make_scaler(cfg.precision)
    start, skipped_total, bad_in_a_row = 0, 0, 0
    metrics = Metrics()
    if state:
        if scaler is not None:
            scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
        skipped_total, bad_in_a_row = int(state["skipped_steps"]), int(state["bad_in_a_row"])
        metrics = Metrics(state["metrics"])
        # Last: nothing above may draw from the global RNGs after it. Each rank continues its own
        # dropout stream; at another world size the streams are re-derived from (seed, step, rank).
        rngs = state.get("rank_rngs") or [state["rng"]]
        set_rng_state(rngs[env.rank] if len(rngs) == env.world_size else state["rng"])
        if len(rngs) != env.world_size and env.world_size > 1:
            torch.manual_seed(distributed.rank_seed(cfg.seed, start, env.rank))
        log.info("resumed from %s at step %d", ckpt, start)
    elif env.world_size > 1:  # same initial weights on every rank (above), different dropout masks
        torch.manual_seed(distributed.rank_seed(cfg.seed, 0, env.rank))

    metrics_path = out / METRICS_NAME
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / CONFIG_NAME, cfg.to_dict())
        if start == 0:
            metrics_path.unlink(missing_ok=True)
        else:
            rewind_metrics(metrics_path, start)
    source = BatchSource(shards, cfg, env.rank, env.world_size)
    end = min(cfg.steps, max_steps) if max_steps else cfg.steps
    log.info(
        "training %s parameters on %d rows of %d tokens from %s, steps %d..%d on %s (%s, strategy %s x %d)",
        f"{model.num_parameters():,}",
        len(shards),
        shards.seq_len,
        shards.path,
        start,
        end,
        device,
        cfg.precision,
        cfg.strategy,
        env.world_size,
    )
    saved_step = start if ckpt is not None else -1

    def save(step: int) -> None:
        nonlocal saved_step
        train_state = {
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
        if env.distributed:

            def write_meta(d: Path) -> None:
                write_json(d / MODEL_CONFIG_NAME, model_cfg.to_dict())
                write_json(d / MODEL_INFO_NAME, info)

            def tensors() -> dict[str, Any]:
                return {"model": rep.model_state(), "optim": rep.optimizer_state()}

            save_sharded(out, step, tensors, write_meta, train_state, cfg.keep_last, env)
        else:
            train_state = {"optimizer": optimizer.state_dict(), **train_state}
            save_checkpoint(
                out, step, lambda d: save_model_folder(model, d, info), train_state, cfg.keep_last
            )
        saved_step = step

    bar = tqdm(
        range(start, end),
        initial=start,
        total=end,
        desc="train",
        unit="step",
        disable=not (progress and main),
    )
    for step in bar:
        lr = lr_at(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio)
        rep.set_lr(lr)
        result = train_step(
            rep.model,
            optimizer,
            source.step_batches(step),
            text_loss_weight=cfg.text_loss_weight,
            grad_clip=cfg.grad_clip,
            precision=cfg.precision,
            scaler=scaler,
            replica=rep,
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
            if main:
                with open(metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
            if row["loss"] is not None:
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
        if diverged:
            bar.close()
            if main:
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
        _save_full_model(rep, out / "model", model_info(shards.manifest, end), env)
    summary: dict[str, Any] = {}
    if main:
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
    return distributed.broadcast_object(summary, env)


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
