"""DeepSpeed ZeRO (stage 1, 2 or 3) as a training replica, with resharding checkpoints.

The DeepSpeed JSON (``deepspeed_config``) chooses the ZeRO stage and communication settings; the
batch sizes, gradient clipping, optimizer (AdamW over our parameter groups) and learning-rate
schedule come from the TrainConfig, so the run trains the same model as every other strategy
(SPEC 4.3's ``ds_config_zero.json`` is ZeRO stage 1). The engine runs in fp32 with our bf16
autocast; DeepSpeed's own fp16/bf16 modes (model cast to half) are refused. Checkpoints do not
use DeepSpeed's per-rank files: the full fp32 weights and AdamW state are gathered parameter by
parameter and written by name with torch.distributed.checkpoint, the format every strategy reads.
Needs the optional extra: ``pip install torch==2.13.0 -e ".[deepspeed]"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cogview.config_io import read_config_file
from cogview.training.config import ConfigError, TrainConfig
from cogview.training.optim import param_groups
from cogview.training.parallel import ADAM_KEYS, Local, named_optimizer_state
from cogview.training.sharded_checkpoint import is_sharded, read_sharded

# Keys the TrainConfig decides; a JSON may repeat them only with the same value.
_OWN_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
)
_REFUSED = {
    "optimizer": "the optimizer is AdamW with the TrainConfig's lr, betas, eps and weight_decay",
    "scheduler": "the lr schedule is the TrainConfig's warmup + cosine",
    "fp16": "set precision in the TrainConfig (bf16 autocast over fp32 weights)",
    "bf16": "set precision in the TrainConfig (bf16 autocast over fp32 weights)",
    "amp": "set precision in the TrainConfig",
}


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The JSON at ``cfg.deepspeed_config`` completed with the TrainConfig's batch sizes and clipping."""
    path = Path(cfg.deepspeed_config).expanduser()
    try:
        user = read_config_file(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"deepspeed_config {path} could not be read as JSON: {e}") from e
    if cfg.precision == "fp16":
        raise ConfigError("strategy deepspeed runs precision fp32 or bf16; fp16 needs strategy ddp or fsdp")
    ours = {
        "train_batch_size": cfg.batch_size * cfg.grad_accum,
        "train_micro_batch_size_per_gpu": cfg.batch_size // world_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.grad_clip,
    }
    for key in _OWN_KEYS:
        if key in user and user[key] != ours[key]:
            raise ConfigError(
                f"deepspeed_config {path}: {key}={user[key]} differs from the training config's {ours[key]} "
                "(from batch_size, grad_accum, grad_clip and the world size); remove it from the JSON"
            )
    for key, why in _REFUSED.items():
        section = user.get(key)
        if section and (not isinstance(section, dict) or section.get("enabled", True)):
            raise ConfigError(f"deepspeed_config {path}: remove the {key!r} section; {why}")
    stage = user.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"deepspeed_config {path}: zero_optimization.stage must be 0-3, got {stage!r}")
    return {"steps_per_print": 2**31 - 1, **user, **ours, "zero_allow_untested_optimizer": True}


class DeepSpeedReplica(Local):
    """A DeepSpeed engine around the model; ZeRO partitions what the JSON's stage says."""

    def _wrap(self, module: nn.Module) -> nn.Module:
        try:
            import deepspeed
        except ImportError as e:
            raise ValueError(
                'strategy deepspeed needs DeepSpeed: pip install torch==2.13.0 -e ".[deepspeed]"'
            ) from e
        if self.checkpoint is not None and is_sharded(self.checkpoint):
            # The engine copies the weights into its partitions when built: load them first.
            weights = module.state_dict()
            read_sharded(self.checkpoint, {"model": weights})
            module.load_state_dict(weights, strict=True)
        cfg = self.cfg
        adamw = torch.optim.AdamW(
            param_groups(module, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True
        )
        engine, self._zero, _, _ = deepspeed.initialize(
            model=module, optimizer=adamw, config=deepspeed_config(cfg, self.env.world_size)
        )
        self._skipped = 0
        return engine

    def _optimizer(self) -> Any:
        return self._zero  # DeepSpeed's ZeRO optimizer around our AdamW, built with the engine

    def restore(self, checkpoint: Path, state: dict[str, Any]) -> None:
        """The optimizer state (the weights went into the engine when it was built)."""
        if is_sharded(checkpoint):
            optim = self.optimizer_state()
            read_sharded(checkpoint, {"optim": optim})
        else:
            optim = named_optimizer_state(self.module, state["optimizer"])
        self.load_optimizer_state(optim)

    def make_scaler(self, precision: str) -> None:
        return None

    # --- the step: DeepSpeed accumulates, reduces, clips and steps inside backward/step -------

    def zero_grad(self) -> None:
        pass  # the engine clears gradients after each optimizer step

    def backward(self, loss: torch.Tensor, scaler: Any) -> None:
        # The engine averages gradients over ranks (hence x world size) and would divide by the
        # accumulation steps (our loss is already normalised over the whole step).
        self.model.backward(loss * self.env.world_size, scale_wrt_gas=False)
        self.model.step()  # an optimizer step only at the last micro-batch (accumulation boundary)

    def clip_grad_norm(self, grad_clip: float, scaler: Any) -> torch.Tensor:
        """The global norm before clipping; NaN when DeepSpeed skipped the step (inf/NaN gradients)."""
        if self.model.skipped_steps != self._skipped:
            self._skipped = self.model.skipped_steps
            return torch.tensor(float("nan"))
        norm = self.model.get_global_grad_norm()
        return torch.as_tensor(float(norm) if norm is not None else float("nan"))

    def step(self, scaler: Any, finite: bool) -> None:
        pass  # taken in backward() at the accumulation boundary

    # --- checkpoint state: full tensors gathered parameter by parameter (collective) -----------

    def _inner_state(self) -> dict[Any, dict[str, torch.Tensor]]:
        """The state of the AdamW over DeepSpeed's flat fp32 partitions, complete and linked.

        AdamW creates its state at a group's first step, and DeepSpeed 0.19 (ZeRO 1/2) links the
        per-parameter views into it once, after the first group's step, leaving the other
        groups unlinked. So: create any missing state as AdamW would (zeros, step 0), then link.
        """
        adamw = self.optimizer.optimizer
        for group in adamw.param_groups:
            for flat in group["params"]:
                if not adamw.state.get(flat):
                    device = flat.device if group.get("fused") or group.get("capturable") else "cpu"
                    adamw.state[flat] = {
                        "step": torch.zeros((), dtype=torch.float32, device=device),
                        **{k: torch.zeros_like(flat, memory_format=torch.preserve_format) for k in ADAM_KEYS},
                    }
        if hasattr(self.optimizer, "_lazy_init_hp_params_optimizer_state"):  # ZeRO 1/2
            self.optimizer._hp_optimizer_states_linked = False
            self.optimizer._lazy_init_hp_params_optimizer_state()
        return adamw.state

    def model_state(self) -> dict[str, torch.Tensor]:
        from deepspeed.utils import safe_get_full_fp32_param

        return {name: safe_get_full_fp32_param(p) for name, p in self.module.named_parameters()}

    def full_model_state(self) -> dict[str, torch.Tensor]:
        return {name: t.cpu() for name, t in self.model_state().items()}

    def optimizer_state(self) -> dict[str, dict[str, torch.Tensor]]:
        from deepspeed.utils import safe_get_full_optimizer_state

        step = max(float(st["step"]) for st in self._inner_state().values())
        out = {}
        for name, p in self.module.named_parameters():
            full = {k: safe_get_full_optimizer_state(p, k) for k in ADAM_KEYS}  # collective (ZeRO-3)
            out[name] = {"step": torch.tensor(step, dtype=torch.float32), **full}
        return out

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        raise AssertionError("DeepSpeed weights are loaded before the engine is built")

    def load_optimizer_state(self, by_name: dict[str, dict[str, torch.Tensor]]) -> None:
        from deepspeed.utils import safe_set_full_optimizer_state

        inner = self._inner_state()
        for name, p in self.module.named_parameters():
            for key in ADAM_KEYS:
                safe_set_full_optimizer_state(p, by_name[name][key].to(self.env.device), key)
        step = float(next(iter(by_name.values()))["step"])
        for st in inner.values():
            st["step"].fill_(step)


__all__ = ["DeepSpeedReplica", "deepspeed_config"]
