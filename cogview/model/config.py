"""Configuration of the CogView transformer: one frozen dataclass and a dict of named presets.

The fields name the paper's stability tricks outright (Sandwich-LN, paper Sec. 2.4 / SPEC 1.3;
PB-relax, paper Sec. 2.4 / SPEC 1.4), so that one code path can express both our own small
models and the released 4B checkpoints (SPEC 1.1). The config travels with the weights as
``config.json`` and is enough to rebuild the model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from cogview.checks import positive_int
from cogview.config_io import from_dict_strict

LN_INPUT_SCALINGS = ("none", "max", "original")


def _positive_finite(value: Any) -> bool:
    """A real number > 0 that is neither inf nor NaN (JSON configs can spell both)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < math.inf

def _divisors(n: int, limit: int = 128) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


@dataclass(frozen=True)
class TransformerConfig:
    """Shape and numerics of a :class:`~cogview.model.CogViewTransformer`.

    Attributes:
        vocab_size: rows of the shared word table (text pieces + image codes + command tokens, padded).
        dim: hidden size; ``head_dim = dim // n_heads``.
        n_layers: number of transformer blocks.
        n_heads: attention heads.
        ffn_dim: inner size of the MLP. ``None`` (or 0) means ``4 * dim``, as in the original;
            the resolved value is stored, so ``to_dict`` always holds an int.
        max_seq_len: rows of the learned position table (1089 for the released models).
        dropout: one rate for embeddings, attention probabilities and residual branches (SPEC 1.1).
        norm_eps: LayerNorm epsilon.
        sandwich_ln: add LayerNorms at the end of both residual branches (SPEC 1.3); False is pre-LN.
        pb_relax_alpha: None is standard softmax attention (fused SDPA); a number (the paper's 32)
            selects the PB-relax formula ``softmax((Q/(a*sqrt(d)) K^T - max) * a)`` (SPEC 1.4).
        ln_input_scaling: what every LayerNorm does to its input first:
            ``"none"``: nothing (the default; plain LayerNorm);
            ``"max"``: the paper's ``LN(x / max|x|)`` with a detached max per row (per token), so rows
            stay independent and cached decoding stays exact;
            ``"original"``: the released code's division by one detached ``max|x| / 8`` over the whole
            tensor; needed for logit parity with the released weights. It couples the rows of a batch
            (an outlier token anywhere changes every row a little) and makes cached decoding differ
            slightly from a full forward.
            Both scalings equal a plain LayerNorm whose eps is multiplied by the squared divisor, i.e.
            eps acts on O(1) inputs: on small activations (variance ~1e-3 at init) that moves logits
            by ~1e-2 against ``"none"``, the effect SPEC 1.4 reports.
        tied_head: compute logits with the word-embedding matrix (no separate output weight).
        cell_embeddings: rows of an extra learned table of 2-D cells of super-resolution codes
            (ours, not in the original; 0 = none, as the released models). Each position gets
            the row of the token it predicts. Id 0 is "no cell" (a fixed zero row); a low-res
            code and the four 2x codes that refine it share one id
            (cogview.data.sequences.sr_cells), so a 2x code can find its source by content
            instead of through 1-D positions that restart at ``[ROI2]`` and shift with the
            prompt length. A window of ``w x w`` low-res codes needs ``w * w + 1`` rows.
        cell_sources: add at the position before each super-resolution 2x code a learned linear
            map (zero at initialisation) of the word embeddings of the 3x3 low-res neighbourhood
            of the code that 2x code refines (ours; False in the original): a convolution over the
            low-res codes feeding each 2x code, since a 2x code is a function of that
            neighbourhood (on our shapes data a lookup table over it is right 99.6% of the time).
    """

    vocab_size: int = 512
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ffn_dim: int | None = None
    max_seq_len: int = 128
    dropout: float = 0.0
    norm_eps: float = 1e-5
    sandwich_ln: bool = True
    pb_relax_alpha: float | None = None
    ln_input_scaling: str = "none"
    tied_head: bool = True
    cell_embeddings: int = 0
    cell_sources: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len"):
            object.__setattr__(self, name, positive_int(name, getattr(self, name), type_error=ValueError))
        if self.dim % self.n_heads != 0:
            raise ValueError(
                f"dim={self.dim} is not divisible by n_heads={self.n_heads}; "
                f"choose n_heads among the divisors of dim (e.g. one of {_divisors(self.dim)[-6:]})"
            )
        if self.ffn_dim is None or self.ffn_dim == 0:
            # Frozen dataclass: resolve the documented default once, so config.json is explicit.
            object.__setattr__(self, "ffn_dim", 4 * self.dim)
        elif isinstance(self.ffn_dim, bool) or not isinstance(self.ffn_dim, int) or self.ffn_dim < 0:
            raise ValueError(f"ffn_dim={self.ffn_dim!r} must be a positive integer, or None for 4 * dim")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must be a probability in [0, 1)")
        if not _positive_finite(self.norm_eps):
            raise ValueError(f"norm_eps={self.norm_eps!r} must be > 0 (the original uses 1e-5)")
        cells = self.cell_embeddings
        if isinstance(cells, bool) or not isinstance(cells, int) or cells < 0:
            raise ValueError(
                f"cell_embeddings={cells!r} must be 0 (none) or the number of cell ids (window**2 + 1)"
            )
        for name in ("sandwich_ln", "tied_head", "cell_sources"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        alpha = self.pb_relax_alpha
        if alpha is not None and not _positive_finite(alpha):
            raise ValueError(
                f"pb_relax_alpha={alpha!r} must be None (standard softmax) or a positive number (the paper uses 32)"
            )
        if self.ln_input_scaling not in LN_INPUT_SCALINGS:
            raise ValueError(
                f"ln_input_scaling={self.ln_input_scaling!r} is not one of {list(LN_INPUT_SCALINGS)}; "
                "use 'none' for plain LayerNorm, 'max' for the paper's LN(x / max|x|), "
                "'original' for parity with the released weights"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of all fields (``ffn_dim`` resolved)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        """Build from a dict; unknown keys are refused (missing keys take their defaults)."""
        return from_dict_strict(
            cls,
            data,
            noun="field(s)",
            hint=" (was this config written by another model class or a newer version?)",
        )


PRESETS: dict[str, TransformerConfig] = {
    # For tests: builds and runs in milliseconds on a CPU.
    "tiny": TransformerConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, max_seq_len=128),
    # A small CPU model: ~10.6M parameters in the blocks, plus vocab_size * 384 in the (tied) word
    # table (the shipped transformers are narrower, docs/default_model.md). Override vocab_size with
    # dataclasses.replace to fit the tokenizers.
    "small": TransformerConfig(
        vocab_size=16384, dim=384, n_layers=6, n_heads=6, max_seq_len=1089, dropout=0.1, sandwich_ln=True
    ),
    # The released CogView (SPEC 1.1): 3,928,849,920 parameters. ln_input_scaling="original" and
    # no alpha-attention reproduce the released code's numerics (SPEC 1.4).
    "cogview-4b": TransformerConfig(
        vocab_size=58240,
        dim=2560,
        n_layers=48,
        n_heads=40,
        ffn_dim=10240,
        max_seq_len=1089,
        dropout=0.1,
        norm_eps=1e-5,
        sandwich_ln=True,
        pb_relax_alpha=None,
        ln_input_scaling="original",
        tied_head=True,
    ),
}
