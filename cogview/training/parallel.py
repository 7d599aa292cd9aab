"""Replicas: the model, its optimizer and the few operations a training step needs, per strategy.

:class:`Local` is the plain single-process model (strategy ``"none"``) and defines the step's
operations exactly as the single-process loop has always done them. :class:`DataParallel`
(DDP, optionally ZeRO-1) and :class:`FullyShardedParallel` (FSDP2) change only what they must:
gradient synchronisation, the loss scale that turns the wrappers' gradient *average* over ranks
into the *sum* our globally normalised loss needs, and how state is gathered for checkpoints.
Checkpoint state is keyed by parameter name (``{"model": {name: tensor}, "optim": {name:
{"step", "exp_avg", "exp_avg_sq"}}}``) so that any strategy, at any world size, reads it back
through ``torch.distributed.checkpoint`` (cogview.training.sharded_checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor

from cogview.training.config import TrainConfig
from cogview.training.distributed import DistEnv, all_reduce_sum
from cogview.training.optim import param_group_names, param_groups
from cogview.training.sharded_checkpoint import is_sharded, read_sharded

ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def adam_state_like(params: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Zero AdamW state shaped (and, for DTensors, sharded) like ``params``: a checkpoint load template."""
    return {
        name: {
            "step": torch.zeros((), dtype=torch.float32),
            **{k: torch.zeros_like(p.detach()) for k in ADAM_KEYS},
        }
        for name, p in params.items()
    }


def named_optimizer_state(
    module: nn.Module, optimizer_state: dict[str, Any]
) -> dict[str, dict[str, torch.Tensor]]:
    """A single-process ``optimizer.state_dict()`` (state keyed by position) keyed by parameter name."""
    names = param_group_names(module)
    positions = [i for g in optimizer_state["param_groups"] for i in g["params"]]
    if len(positions) != len(names):
        raise ValueError(
            f"the optimizer state holds {len(positions)} parameters but the model has {len(names)}; "
            "it was written for another model"
        )
    by_position = dict(zip(positions, names, strict=True))
    return {by_position[i]: st for i, st in optimizer_state["state"].items()}


class Local:
    """One process, the model itself and a fused AdamW (strategy ``"none"``)."""

    def __init__(
        self,
        module: nn.Module,
        cfg: TrainConfig,
        env: DistEnv,
        on_model: Callable[[nn.Module], None] | None = None,
        checkpoint: Path | None = None,
        state: dict[str, Any] | None = None,
    ) -> None:
        """Place and wrap ``module`` and build AdamW; with ``checkpoint``, resume its optimizer state.

        ``module`` holds the weights to start from: fresh, ``init_from``, or a single-process
        checkpoint's; a sharded ``checkpoint``'s weights are loaded here, after wrapping.
        """
        self.env, self.module, self.cfg, self.checkpoint = env, module, cfg, checkpoint
        self._place(module)
        if on_model is not None:
            on_model(module)
        self.model = self._wrap(module)
        self.optimizer = self._optimizer()
        if checkpoint is not None:
            self.restore(checkpoint, state or {})

    @classmethod
    def of(cls, model: nn.Module, optimizer: torch.optim.Optimizer) -> Local:
        """A replica around an existing single-process model and optimizer (for :func:`train_step`)."""
        rep = cls.__new__(cls)
        rep.module = rep.model = model
        rep.optimizer = optimizer
        rep.env = DistEnv("none", 0, 1, 0, next(model.parameters()).device)
        return rep

    def _place(self, module: nn.Module) -> None:
        module.to(self.env.device).train()

    def _wrap(self, module: nn.Module) -> nn.Module:
        return module

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.AdamW(
            param_groups(self.module, cfg.weight_decay),
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            fused=self._fused_adamw,
        )

    # The fused kernel takes the scaler's inf flag itself, in the shape GradScaler gives it.
    _fused_adamw = True

    @property
    def distributed(self) -> bool:
        return self.env.distributed

    def make_scaler(self, precision: str) -> torch.amp.GradScaler | None:
        """fp16 needs dynamic loss scaling (SPEC 4.4); bf16 and fp32 do not."""
        return torch.amp.GradScaler(self.env.device.type) if precision == "fp16" else None

    # --- the step ------------------------------------------------------------------------------

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def accumulating(self, last: bool) -> Any:
        """Context of one micro-batch; gradient synchronisation may wait for the ``last`` one."""
        return nullcontext()

    def backward(self, loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t, self.env)

    def clip_grad_norm(self, grad_clip: float, scaler: torch.amp.GradScaler | None) -> torch.Tensor:
        """Unscale (fp16), clip to ``grad_clip`` if positive, and return the global norm before clipping."""
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    def step(self, scaler: torch.amp.GradScaler | None, finite: bool) -> None:
        if scaler is not None:
            scaler.step(self.optimizer)  # skips the update itself when the gradients hold inf/NaN
            scaler.update()
        elif finite:
            self.optimizer.step()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # --- checkpoint state ----------------------------------------------------------------------

    def _named_params(self) -> dict[str, nn.Parameter]:
        """The parameters whose optimizer state this rank holds, by name."""
        return dict(self.module.named_parameters())

    def _owner(self) -> torch.optim.Optimizer:
        """The optimizer object whose ``state`` holds this rank's AdamW tensors."""
        return self.optimizer

    def model_state(self) -> dict[str, torch.Tensor]:
        """Weights by name: plain tensors, or this rank's shards as DTensors (FSDP)."""
        return get_model_state_dict(self.model)

    def full_model_state(self) -> dict[str, torch.Tensor]:
        """All weights as plain CPU tensors on rank 0 (other ranks may get an empty dict); collective."""
        return get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def optimizer_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """AdamW state by parameter name (zeros for parameters not stepped yet)."""
        params = self._named_params()
        out = adam_state_like(params)
        state = self._owner().state
        for name, p in params.items():
            if p in state:
                out[name] = {
                    "step": state[p]["step"].detach().float().cpu(),
                    **{k: state[p][k] for k in ADAM_KEYS},
                }
        return out

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        set_model_state_dict(self.model, state)

    def load_optimizer_state(self, by_name: dict[str, dict[str, torch.Tensor]]) -> None:
        """Set the AdamW state from tensors by name: full tensors, or shards shaped like the parameters."""
        owner, params = self._owner(), self._named_params()
        positions = {p: i for i, p in enumerate(p for g in owner.param_groups for p in g["params"])}
        state = {}
        for name, p in params.items():
            st = by_name[name]
            state[positions[p]] = {"step": st["step"], **{k: _like(st[k], p) for k in ADAM_KEYS}}
        owner.load_state_dict({"state": state, "param_groups": owner.state_dict()["param_groups"]})

    def restore(self, checkpoint: Path, state: dict[str, Any]) -> None:
        """Load a checkpoint's weights (sharded only) and optimizer state, whatever wrote it."""
        if is_sharded(checkpoint):
            tensors = {"model": self.model_state(), "optim": self.optimizer_state()}
            read_sharded(checkpoint, tensors)
            self.load_model_state(tensors["model"])
            self.load_optimizer_state(tensors["optim"])
        else:
            self.load_full_checkpoint(state)

    def load_full_checkpoint(self, state: dict[str, Any]) -> None:
        """Resume from a single-process checkpoint (weights already in ``module``): the optimizer state."""
        self.optimizer.load_state_dict(state["optimizer"])


def _like(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``t`` placed as ``p``: a full tensor is sharded like a DTensor parameter (each rank keeps its part)."""
    if isinstance(p, DTensor) and not isinstance(t, DTensor):
        return distribute_tensor(t.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
    return t


class DataParallel(Local):
    """DDP over all ranks; with ``zero1`` the AdamW state is sharded by ZeroRedundancyOptimizer."""

    def _wrap(self, module: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.env.device] if self.env.device.type == "cuda" else None
        # Gradients as views of the all-reduce buckets: no second copy of them (4 bytes per parameter).
        return DistributedDataParallel(module, device_ids=device_ids, gradient_as_bucket_view=True)

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        if not cfg.zero1:
            return super()._optimizer()
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(
            param_groups(self.module, cfg.weight_decay),
            optimizer_class=torch.optim.AdamW,
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            fused=True,
        )

    def accumulating(self, last: bool) -> Any:
        return nullcontext() if last else self.model.no_sync()

    def backward(self, loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
        # DDP averages gradients over ranks; the loss is already divided by the global weight, so
        # scale by the world size to get the sum (exact for powers of two).
        super().backward(loss * self.env.world_size, scaler)

    def _owner(self) -> torch.optim.Optimizer:
        return self.optimizer.optim if self.cfg.zero1 else self.optimizer

    def _named_params(self) -> dict[str, nn.Parameter]:
        named = super()._named_params()
        if not self.cfg.zero1:
            return named
        owned = {p for g in self.optimizer.optim.param_groups for p in g["params"]}
        return {n: p for n, p in named.items() if p in owned}

    def load_full_checkpoint(self, state: dict[str, Any]) -> None:
        self.load_optimizer_state(named_optimizer_state(self.module, state["optimizer"]))


class FullyShardedParallel(DataParallel):
    """FSDP2: every block and then the root ``fully_shard``-ed, parameters sharded over the ranks.

    Mixed precision follows the config: bf16/fp16 compute with fp32 gradient reduction; the
    sharded master weights and AdamW state stay fp32.
    """

    def _place(self, module: nn.Module) -> None:
        module.train()  # fully_shard moves each rank's shards to the device: the full model never is

    def _wrap(self, module: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.env.device.type, (self.env.world_size,))
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.precision)
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)
        for block in module.layers:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        return fully_shard(module, mesh=mesh, mp_policy=mp)

    @property
    def _fused_adamw(self) -> bool:
        # ShardedGradScaler's inf flag has shape [1], which fused AdamW cannot take: with fp16 the
        # foreach AdamW runs, and the scaler skips its step on inf/NaN itself.
        return self.cfg.precision != "fp16"

    def make_scaler(self, precision: str) -> Any:
        if precision != "fp16":
            return None
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(self.env.device.type)  # agrees on inf/NaN across the shards

    @contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        self.model.set_requires_gradient_sync(last)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    def _owner(self) -> torch.optim.Optimizer:
        return self.optimizer

    def _named_params(self) -> dict[str, nn.Parameter]:
        return dict(self.module.named_parameters())


__all__ = [
    "DataParallel",
    "FullyShardedParallel",
    "Local",
    "adam_state_like",
    "named_optimizer_state",
]
