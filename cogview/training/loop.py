"""The training run: build or resume, the step loop, checkpoints, and the finished model folder.

A step depends only on what a checkpoint saves (weights, optimizer and loss-scaler state, RNG
states, metric sums) and on pure functions of the config and the step (lr, SPEC 4.3; batch rows;
caption dropout), so a run resumed after a SIGKILL replays the uninterrupted one bit for bit.
Too many NaN/inf steps in a row (SPEC 4.2) raise :class:`TrainingDiverged`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cogview.checks import positive_int
from cogview.data.shards import ShardMixture, TokenShards, open_data
from cogview.model import CogViewTransformer, TransformerConfig
from cogview.serialization import CONFIG_NAME as MODEL_CONFIG_NAME
from cogview.serialization import MODEL_INFO_NAME, write_json
from cogview.training import distributed
from cogview.training.batches import BatchSource
from cogview.training.checkpoint import (
    checkpoint_dirs,
    latest_checkpoint,
    load_state,
    save_checkpoint,
    set_rng_state,
)
from cogview.training.config import TrainConfig
from cogview.training.distributed import DistEnv
from cogview.training.metrics import METRICS_NAME, Metrics, read_metrics, rewind_metrics
from cogview.training.optim import lr_at
from cogview.training.parallel import Local
from cogview.training.sharded_checkpoint import is_sharded, save_sharded
from cogview.training.step import train_step
from cogview.training.strategies import build_replica

log = logging.getLogger(__name__)

CONFIG_NAME = "train_config.json"
LOSS_PLOT_NAME = "loss.png"
# Manifest entries that fix what the token ids mean and which rows a batch holds.
_DATA_IDENTITY = ("seq_len", "vocab", "text_tokenizer", "image_tokenizer", "total_rows", "tasks")


class TrainingDiverged(RuntimeError):
    """Raised after ``max_bad_steps`` consecutive steps with a NaN/inf loss or gradient."""


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


@dataclass
class _Run:
    """One run between steps: what it trains, and the counters a checkpoint saves."""

    cfg: TrainConfig
    out: Path
    env: DistEnv
    shards: TokenShards | ShardMixture
    model_cfg: TransformerConfig
    identity: dict[str, Any]  # data_identity of the shards
    model: CogViewTransformer  # the unwrapped model (rank 0 saves it when not sharded)
    rep: Local
    scaler: torch.amp.GradScaler | None
    start: int = 0
    saved_step: int = -1
    skipped_total: int = 0
    bad_in_a_row: int = 0
    metrics: Metrics = field(default_factory=Metrics)

    @property
    def metrics_path(self) -> Path:
        return self.out / METRICS_NAME


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
    if max_steps is not None:
        positive_int("max_steps", max_steps, type_error=ValueError)
    run = _build_or_resume(cfg, out, resume, on_model, env)
    end = min(cfg.steps, max_steps) if max_steps else cfg.steps
    _step_loop(run, end, progress)
    return _finish(run, end, started)


def _build_or_resume(
    cfg: TrainConfig,
    out: Path,
    resume: bool,
    on_model: Callable[[CogViewTransformer], None] | None,
    env: DistEnv,
) -> _Run:
    """The run at its first step: fresh, from ``init_from``, or from the latest checkpoint in ``out``.

    Also starts the output folder (rank 0): ``train_config.json``, and the metrics log cleared
    or rewound to the checkpoint.
    """
    shards = open_data(cfg.data)
    model_cfg = cfg.transformer_config(shards.vocab.size, shards.seq_len)
    identity = data_identity(shards.manifest)

    ckpt = distributed.broadcast_object(latest_checkpoint(out) if resume else None, env)
    if resume and ckpt is None:
        log.warning("--resume given but %s has no checkpoint; starting from scratch", out)
    if not resume and checkpoint_dirs(out):
        raise ValueError(f"{out} already holds checkpoints; pass --resume to continue, or choose a new --out")

    torch.manual_seed(cfg.seed)
    model, state = _start_model(cfg, model_cfg, identity, ckpt)
    rep = build_replica(model, cfg, env, on_model, ckpt, state)
    scaler = rep.make_scaler(cfg.precision)
    run = _Run(cfg, out, env, shards, model_cfg, identity, model, rep, scaler)
    if state:
        _resume_counters(run, state)
        log.info("resumed from %s at step %d", ckpt, run.start)
    elif env.world_size > 1:  # same initial weights on every rank (above), different dropout masks
        torch.manual_seed(distributed.rank_seed(cfg.seed, 0, env.rank))
    run.saved_step = run.start if ckpt is not None else -1

    if env.is_main:  # rank 0 alone writes metrics, plots, progress and the model folder
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / CONFIG_NAME, cfg.to_dict())
        if run.start == 0:
            run.metrics_path.unlink(missing_ok=True)
        else:
            rewind_metrics(run.metrics_path, run.start)
    return run


def _start_model(
    cfg: TrainConfig, model_cfg: TransformerConfig, identity: dict[str, Any], ckpt: Path | None
) -> tuple[CogViewTransformer, dict[str, Any]]:
    """The model to train and, when resuming, the checkpoint's ``state.pt`` (checked against the run)."""
    if ckpt is None and cfg.init_from:
        return init_model(Path(cfg.init_from).expanduser(), model_cfg), {}
    if ckpt is None:
        return CogViewTransformer(model_cfg), {}
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
    model = CogViewTransformer(model_cfg) if is_sharded(ckpt) else CogViewTransformer.from_pretrained(ckpt)
    return model, state


def _resume_counters(run: _Run, state: dict[str, Any]) -> None:
    """The loss scale, step, skip counts, metric sums and RNG streams of a checkpoint's ``state``."""
    cfg, env = run.cfg, run.env
    if run.scaler is not None:
        run.scaler.load_state_dict(state["scaler"])
    run.start = int(state["step"])
    run.skipped_total, run.bad_in_a_row = int(state["skipped_steps"]), int(state["bad_in_a_row"])
    run.metrics = Metrics(state["metrics"])
    # Last: nothing above may draw from the global RNGs after it. Each rank continues its own
    # dropout stream; at another world size the streams are re-derived from (seed, step, rank).
    rngs = state.get("rank_rngs") or [state["rng"]]
    set_rng_state(rngs[env.rank] if len(rngs) == env.world_size else state["rng"])
    if len(rngs) != env.world_size and env.world_size > 1:
        torch.manual_seed(distributed.rank_seed(cfg.seed, run.start, env.rank))


def _step_loop(run: _Run, end: int, progress: bool) -> None:
    """Steps ``run.start`` .. ``end``: log metrics rows, checkpoint, stop on divergence."""
    cfg, env, rep, scaler = run.cfg, run.env, run.rep, run.scaler
    source = BatchSource(run.shards, cfg, env.rank, env.world_size)
    log.info(
        "training %s parameters on %d rows of %d tokens from %s, steps %d..%d on %s (%s, strategy %s x %d)",
        f"{run.model.num_parameters():,}",
        len(run.shards),
        run.shards.seq_len,
        run.shards.path,
        run.start,
        end,
        env.device,
        cfg.precision,
        cfg.strategy,
        env.world_size,
    )
    bar = tqdm(
        range(run.start, end),
        initial=run.start,
        total=end,
        desc="train",
        unit="step",
        disable=not (progress and env.is_main),
    )
    for step in bar:
        lr = lr_at(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio)
        rep.set_lr(lr)
        result = train_step(
            rep.model,
            rep.optimizer,
            source.step_batches(step),
            text_loss_weight=cfg.text_loss_weight,
            grad_clip=cfg.grad_clip,
            precision=cfg.precision,
            scaler=scaler,
            replica=rep,
        )
        run.metrics.add(result)
        if result.skipped:
            run.skipped_total += 1
            run.bad_in_a_row += 1
            log.warning("step %d skipped: %s (loss %s)", step + 1, result.skipped, result.loss)
        else:
            run.bad_in_a_row = 0
        done = step + 1
        diverged = run.bad_in_a_row >= cfg.max_bad_steps
        # No partial row at a --max-steps stop: its sums go into the checkpoint, so a resumed run
        # logs exactly the rows of an uninterrupted one.
        if done % cfg.log_every == 0 or done == cfg.steps or diverged:
            extra = {"loss_scale": scaler.get_scale()} if scaler is not None else {}
            row = run.metrics.row(done, lr, run.skipped_total, extra)
            if env.is_main:
                with open(run.metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
            if row["loss"] is not None:
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
        if diverged:
            bar.close()
            raise _diverged(run, done, result.skipped)
        if (done % cfg.checkpoint_every == 0 or done == end) and done != run.saved_step:
            _save(run, done)
    bar.close()


def _diverged(run: _Run, done: int, why: str) -> TrainingDiverged:
    """The error that stops the run at step ``done`` (after the loss plot), with what to change."""
    if run.env.is_main:
        _plot(run.out)
    last = latest_checkpoint(run.out)
    return TrainingDiverged(
        f"stopped at step {done}: the last {run.bad_in_a_row} steps had a NaN/inf "
        f"{why.split()[-1]} ({run.skipped_total} skipped in all). Lower lr (now {run.cfg.lr}), "
        f"keep grad_clip on, use precision=fp32 or bf16, or keep sandwich_ln/pb_relax_alpha on; "
        + (f"the last good checkpoint is {last}." if last else "no checkpoint was written yet.")
    )


def _save(run: _Run, step: int) -> None:
    """The checkpoint of ``step``: sharded under a distributed strategy, else written by this process."""
    cfg, rep = run.cfg, run.rep
    train_state = {
        "scaler": run.scaler.state_dict() if run.scaler is not None else {},
        "train_config": cfg.to_dict(),
        "data": run.identity,
        "skipped_steps": run.skipped_total,
        "bad_in_a_row": run.bad_in_a_row,
        "metrics": run.metrics.sums,
        "sequences_seen": step * cfg.sequences_per_step,  # the data position (batches are f(step))
        "lr": lr_at(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio),  # the schedule is f(step)
    }
    info = model_info(run.shards.manifest, step)
    if run.env.distributed:

        def write_meta(d: Path) -> None:
            write_json(d / MODEL_CONFIG_NAME, run.model_cfg.to_dict())
            write_json(d / MODEL_INFO_NAME, info)

        def tensors() -> dict[str, Any]:
            return {"model": rep.model_state(), "optim": rep.optimizer_state()}

        save_sharded(run.out, step, tensors, write_meta, train_state, cfg.keep_last, run.env)
    else:
        train_state = {"optimizer": rep.optimizer.state_dict(), **train_state}
        save_checkpoint(
            run.out, step, lambda d: save_model_folder(run.model, d, info), train_state, cfg.keep_last
        )
    run.saved_step = step


def _finish(run: _Run, end: int, started: float) -> dict[str, Any]:
    """The model folder (once ``cfg.steps`` are done), the loss plot and the summary every rank returns."""
    out, env = run.out, run.env
    finished = end == run.cfg.steps
    if finished:
        _save_full_model(run.rep, out / "model", model_info(run.shards.manifest, end), env)
    summary: dict[str, Any] = {}
    if env.is_main:
        _plot(out)
        rows = read_metrics(out)
        last = rows[-1] if rows else {}
        summary = {
            "step": end,
            "finished": finished,
            "loss": last.get("loss"),
            "image_loss": last.get("image_loss"),
            "text_loss": last.get("text_loss"),
            "skipped_steps": run.skipped_total,
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


__all__ = ["TrainingDiverged", "data_identity", "init_model", "model_info", "save_model_folder", "train"]
