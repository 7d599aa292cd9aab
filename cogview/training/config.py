"""TrainConfig: every setting a transformer training run depends on, typed and validated up front.

A run is reproducible from this config alone (plus the token shards it names): it is written to
``DIR/train_config.json`` and stored in every checkpoint, and ``--resume`` refuses a different one.
Bad values fail at load time with a message naming the key, what it must be and what it got,
rather than minutes into training. Defaults follow SPEC 4.3 (AdamW, betas (0.9, 0.95), warmup then
cosine to 0.1x, weight decay 4e-2) at the scale of our small models.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from cogview.config_io import from_dict_strict
from cogview.model.config import PRESETS, TransformerConfig

PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
# "none": one process; the others run under torchrun (docs/scaling.md).
STRATEGIES = ("none", "ddp", "fsdp", "deepspeed")

# Keys that may differ between a run and its resume: they change neither the weights nor the
# batches. ``data`` is checked through the shards' manifest instead (a moved folder is fine).
# The strategy and its settings may change too: every strategy reads every checkpoint format,
# at any world size (``batch_size`` is global, so the batches do not depend on the world size).
RESUMABLE_CHANGES = (
    "data",
    "checkpoint_every",
    "keep_last",
    "device",
    "strategy",
    "zero1",
    "activation_checkpointing",
    "deepspeed_config",
)


class ConfigError(ValueError):
    """A training config that cannot be used; the message names the key and the fix."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run of the CogView transformer (see docs/training.md).

    ``model`` is a preset name (``"small"``), a preset plus overrides
    (``{"preset": "tiny", "max_seq_len": 96}``) or a full field dict; ``vocab_size`` is taken from
    the shards' vocabulary unless given. It is stored normalised as a dict.
    """

    # A token-shard folder (``cogview prepare --out``; relative paths from the working dir), or a
    # list of folders / {"path": ..., "repeat": n} entries mixed by repeat counts.
    data: Any = ""
    model: Any = field(default_factory=lambda: {"preset": "small"})
    steps: int = 10_000  # optimizer steps; the lr schedule ends here
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4  # peak learning rate (SPEC 4.3: 3e-4 for the 4B model)
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr (SPEC 4.3: decay ratio 0.1)
    warmup: int = 200  # linear warmup steps
    weight_decay: float = 0.04  # on all weights but biases and LayerNorms (SPEC 4.3)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping (the norm is still logged)
    text_loss_weight: float = 1.0  # SPEC 4.2 --txt-loss-scale: weight of positions whose input is text
    caption_dropout: float = 0.0  # probability of training a sequence with an empty caption (for CFG)
    # Fraction of the 2x input codes of super-resolution rows replaced by random codes (targets
    # unchanged): a model that may not trust the previous code must read the low-res crop, which
    # is what keeps free decoding from copying its own first mistake across a window.
    sr_input_noise: float = 0.0
    precision: str = "fp32"  # "fp32", or autocast to "bf16" / "fp16" (fp16 adds dynamic loss scaling)
    device: str = "auto"  # "auto" = cuda when available, else cpu
    log_every: int = 10  # steps per metrics.jsonl row
    checkpoint_every: int = 500
    keep_last: int = 3  # checkpoints kept (older ones are deleted)
    seed: int = 0  # initialisation, batch order, caption dropout and dropout
    max_bad_steps: int = 20  # stop after this many consecutive skipped (NaN/inf) steps
    threads: int = 0  # torch intra-op threads during training; 0 = leave torch's setting
    # A model folder (e.g. a previous run's ``OUT/model``) whose weights start this run instead of
    # a fresh initialisation: fine-tuning, or more steps on a new schedule. Same architecture.
    init_from: str = ""
    # Scale-out (docs/scaling.md). With a strategy other than "none" the run is launched by
    # torchrun; batch_size stays the *global* micro-batch and is split evenly over the ranks.
    strategy: str = "none"
    zero1: bool = False  # ddp: shard the AdamW state over the ranks (ZeroRedundancyOptimizer)
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass
    deepspeed_config: str = (
        ""  # deepspeed: a DeepSpeed JSON (ZeRO stage, buckets), e.g. configs/deepspeed/zero2.json
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "model", normalize_model(self.model))
        if not self.data or not isinstance(self.data, str | list):
            raise ConfigError(
                "data must name a token-shard folder (made by `cogview prepare --out DIR`) or a list of "
                f"folders / {{'path': ..., 'repeat': n}} entries, got {self.data!r}"
            )
        for name in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "max_bad_steps"):
            _require(name, getattr(self, name) > 0, "a positive integer", getattr(self, name))
        for name in ("warmup", "keep_last", "seed", "threads"):
            _require(name, getattr(self, name) >= 0, "an integer >= 0", getattr(self, name))
        _require("lr", self.lr > 0, "a positive number (e.g. 3e-4)", self.lr)
        _require("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "a fraction in [0, 1]", self.min_lr_ratio)
        _require("weight_decay", self.weight_decay >= 0, "a number >= 0", self.weight_decay)
        _require(
            "betas",
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "two numbers in [0, 1), e.g. [0.9, 0.95]",
            list(self.betas),
        )
        _require("eps", self.eps > 0, "a positive number", self.eps)
        _require("grad_clip", self.grad_clip >= 0, "a number >= 0 (0 disables clipping)", self.grad_clip)
        _require("text_loss_weight", self.text_loss_weight >= 0, "a number >= 0", self.text_loss_weight)
        _require(
            "caption_dropout", 0 <= self.caption_dropout <= 1, "a probability in [0, 1]", self.caption_dropout
        )
        _require("sr_input_noise", 0 <= self.sr_input_noise < 1, "a fraction in [0, 1)", self.sr_input_noise)
        _require("precision", self.precision in PRECISIONS, f"one of {list(PRECISIONS)}", self.precision)
        _require("device", self.device in DEVICES, f"one of {list(DEVICES)}", self.device)
        _require("strategy", self.strategy in STRATEGIES, f"one of {list(STRATEGIES)}", self.strategy)
        if self.zero1 and self.strategy != "ddp":
            raise ConfigError(f"zero1 shards the optimizer of strategy ddp; strategy is {self.strategy!r}")
        if (self.strategy == "deepspeed") != bool(self.deepspeed_config):
            raise ConfigError(
                "strategy deepspeed needs deepspeed_config (a DeepSpeed JSON, e.g. configs/deepspeed/zero2.json), "
                f"and deepspeed_config needs strategy deepspeed; got strategy={self.strategy!r}, "
                f"deepspeed_config={self.deepspeed_config!r}"
            )
        self.transformer_config()  # validates the architecture now, not after loading data

    # --- derived ------------------------------------------------------------------------------

    def transformer_config(
        self, vocab_size: int | None = None, seq_len: int | None = None
    ) -> TransformerConfig:
        """The model's config, completed from the shards: their vocabulary size and sequence length.

        ``vocab_size`` (the shards' padded vocabulary) replaces the preset's unless the config
        sets ``model.vocab_size`` itself, which must then be at least as large.
        """
        spec = dict(self.model)
        preset = spec.pop("preset", None)
        base = PRESETS[preset].to_dict() if preset else {}
        if vocab_size is not None:
            if "vocab_size" in spec and spec["vocab_size"] < vocab_size:
                raise ConfigError(
                    f"model.vocab_size={spec['vocab_size']} is smaller than the shards' vocabulary "
                    f"({vocab_size} ids); remove model.vocab_size to take it from the shards"
                )
            base["vocab_size"] = vocab_size
        base.update(spec)
        try:
            config = TransformerConfig.from_dict(base)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model: {e}") from None
        if seq_len is not None and config.max_seq_len < seq_len:
            raise ConfigError(
                f"model.max_seq_len={config.max_seq_len} is shorter than the shards' sequences "
                f"({seq_len} tokens); set model.max_seq_len to at least {seq_len}"
            )
        return config

    @property
    def sequences_per_step(self) -> int:
        """Sequences per optimizer step (batch_size x grad_accum)."""
        return self.batch_size * self.grad_accum

    # --- (de)serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from plain data (a parsed JSON/YAML file); unknown keys are an error."""
        if not isinstance(d, dict):
            raise ConfigError(
                f"a training config must be a mapping of keys to values, got {type(d).__name__}"
            )
        return from_dict_strict(cls, d, "training config", noun="key(s)", error=ConfigError)

    def resume_mismatches(self, other: dict[str, Any]) -> list[str]:
        """Keys (besides :data:`RESUMABLE_CHANGES`) whose values differ from a stored config dict."""
        mine = self.to_dict()
        # A key an older checkpoint does not record matches when this run leaves it at its default.
        defaults = TrainConfig(data=self.data).to_dict()
        return sorted(
            k
            for k in set(mine) | set(other)
            if k not in RESUMABLE_CHANGES
            and mine.get(k) != other.get(k, defaults.get(k) if k in mine else None)
        )


def normalize_model(model: Any) -> dict[str, Any]:
    """``"tiny"`` -> ``{"preset": "tiny"}``; dicts are checked for a known preset and copied."""
    if isinstance(model, str):
        model = {"preset": model}
    if not isinstance(model, dict):
        raise ConfigError(
            f"model must be a preset name ({sorted(PRESETS)}) or a dict of TransformerConfig fields, "
            f"got {model!r}"
        )
    preset = model.get("preset")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"model.preset={preset!r} is not a preset; choose one of {sorted(PRESETS)}")
    return dict(model)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge ``--set`` overrides into a raw config; ``model.KEY=VALUE`` edits one model field."""
    out = dict(raw)
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if not rest:
            out[key] = value
            continue
        if head != "model" or "." in rest:
            raise ConfigError(
                f"--set {key}: only model fields can be set with a dotted key (model.dropout=0.1)"
            )
        model = normalize_model(out.get("model", {"preset": "small"}))
        model[rest] = value
        out["model"] = model
    return out


# --- validation helpers ---------------------------------------------------------------------


def _require(name: str, ok: bool, what: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {what}, got {got!r}")


def _check_type(name: str, value: Any, annotation: Any) -> None:
    """Check JSON-ish types (YAML may give ints for floats: fine; bools for ints: not)."""
    kind = str(annotation)
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        what = "an integer"
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        what = "a number"
    elif kind == "str":
        ok, what = isinstance(value, str), "a string"
    elif kind == "bool":
        ok, what = isinstance(value, bool), "true or false"
    elif kind.startswith("tuple"):
        ok = isinstance(value, list | tuple) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        )
        what = "a list of numbers"
    else:
        return
    if not ok:
        raise ConfigError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")


__all__ = [
    "DEVICES",
    "PRECISIONS",
    "STRATEGIES",
    "ConfigError",
    "TrainConfig",
    "apply_overrides",
    "normalize_model",
]
