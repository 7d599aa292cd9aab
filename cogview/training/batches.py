"""Training batches as a pure function of (seed, step, micro-step, rank): nothing to save for resume.

Sample ``p`` of a run is row ``perm_e[p mod N]`` of a seeded per-epoch permutation, caption dropout
is drawn per step from a generator seeded by (seed, step), and with several ranks each reads its
block of every global micro-batch (cogview.data.shards.rank_part).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cogview.data.sequences import drop_caption, positions_and_mask, sr_cells, sr_sources, text_token_mask
from cogview.data.shards import ShardMixture, TokenShards
from cogview.training.config import TrainConfig


@dataclass(frozen=True)
class Batch:
    """One micro-batch, shifted for next-token prediction: every tensor is ``[B, T]`` with T = L - 1."""

    inputs: torch.Tensor  # int64 tokens[:, :-1]
    targets: torch.Tensor  # int64 tokens[:, 1:]
    positions: torch.Tensor  # int64 position ids of the inputs
    loss_mask: torch.Tensor  # float 1 where the target is a real token (not [PAD])
    text_mask: torch.Tensor  # bool True where the input is text or a command (SPEC 4.2)
    # Super-resolution inputs describe the token each position predicts (the target), so the
    # position before a 2x code is told which low-res code that code refines.
    cells: torch.Tensor  # int64 2-D cell id of the target (0 elsewhere; sr_cells)
    sources: (
        torch.Tensor
    )  # int64 [B, T, 9] low-res 3x3 neighbourhood the target refines (-1: none; sr_sources)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in self.__dict__.values()))

    @property
    def n_tokens(self) -> int:
        return self.inputs.numel()


def make_batch(
    tokens: torch.Tensor,
    vocab: Any,
    drop: torch.Tensor | None = None,
    noise: tuple[float, torch.Generator] | None = None,
    cell_inputs: bool = True,
) -> Batch:
    """Token rows ``[B, L]`` -> a shifted :class:`Batch`; rows with ``drop`` True lose their caption.

    ``noise = (rate, generator)`` replaces that fraction of the super-resolution 2x input codes
    (after ``[BOI2]``) by uniformly random codes; targets stay the true codes.
    ``cell_inputs=False`` (a model without cell inputs) leaves ``cells`` 0 and ``sources`` -1
    instead of computing them: the 3x3 sources cost more than the rest of the batch together.
    """
    if drop is not None and bool(drop.any()):
        tokens = drop_caption(tokens, drop, vocab)  # [B, L]
    positions, mask = positions_and_mask(tokens, vocab)  # [B, L] each
    noisy = noise is not None and noise[0] > 0
    cells = sr_cells(tokens, vocab) if cell_inputs or noisy else torch.zeros_like(tokens)  # [B, L]
    sources = sr_sources(tokens, vocab, cells) if cell_inputs else torch.full((*tokens.shape, 9), -1)
    inputs = tokens[:, :-1]  # [B, T]
    if noisy:
        rate, g = noise
        high = (cells[:, :-1] > 0) & ((inputs == vocab.token_id("[BOI2]")).cumsum(1) > 0)  # [B, T]
        flip = high & (torch.rand(inputs.shape, generator=g) < rate)
        codes = torch.randint(vocab.image_range.start, vocab.image_range.stop, inputs.shape, generator=g)
        inputs = torch.where(flip, codes, inputs)
    return Batch(
        inputs=inputs,
        targets=tokens[:, 1:],
        positions=positions[:, :-1],
        loss_mask=mask[:, 1:],
        text_mask=text_token_mask(inputs, vocab),
        cells=cells[:, 1:],
        sources=sources[:, 1:],
    )


class BatchSource:
    """The micro-batches of every step as a pure function of (seed, step, micro-step).

    Sample ``p = (step * grad_accum + micro) * batch_size + j`` of the run is row
    ``perm_e[p mod N]`` of epoch ``e = p // N``, where ``perm_e`` is a permutation seeded by
    (seed, e): every row is seen once per epoch and resuming needs only the step. Caption
    dropout is drawn per optimizer step from a generator seeded by (seed, step), so gradient
    accumulation does not change which sequences lose their caption.

    With ``world_size`` ranks, ``batch_size`` is still the global micro-batch: rank ``r`` reads
    block ``r`` of it (:func:`~cogview.data.shards.rank_part`), so the ranks together see the rows
    of the single-process run, in the same order, at any world size.
    """

    def __init__(
        self, shards: TokenShards | ShardMixture, cfg: TrainConfig, rank: int = 0, world_size: int = 1
    ) -> None:
        self.shards = shards
        self.vocab = shards.vocab
        self.seed, self.batch_size, self.grad_accum = cfg.seed, cfg.batch_size, cfg.grad_accum
        self.caption_dropout, self.sr_input_noise = cfg.caption_dropout, cfg.sr_input_noise
        self.rank, self.world_size = rank, world_size
        model = cfg.transformer_config(self.vocab.size, shards.seq_len)
        self.cell_inputs = model.cell_embeddings > 0 or model.cell_sources
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

    def noise(self, step: int, micro: int) -> tuple[float, torch.Generator] | None:
        """Input-noise settings of one micro-batch, seeded by (seed, step, micro, rank)."""
        if self.sr_input_noise <= 0:
            return None
        seed = int(np.random.SeedSequence([self.seed, step, micro, self.rank, 0x5E7]).generate_state(1)[0])
        return self.sr_input_noise, torch.Generator().manual_seed(seed)

    def step_batches(self, step: int) -> list[Batch]:
        """This rank's part of every micro-batch of optimizer step ``step`` (CPU tensors)."""
        drops = self.caption_drops(step).view(self.grad_accum, self.world_size, -1)[:, self.rank]
        return [
            make_batch(
                torch.from_numpy(self.shards.rows_of_rank(self.indices(step, m), self.rank, self.world_size)),
                self.vocab,
                drops[m],
                self.noise(step, m),
                self.cell_inputs,
            )
            for m in range(self.grad_accum)
        ]


__all__ = ["Batch", "BatchSource", "make_batch"]
