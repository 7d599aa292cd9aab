"""One forward step of the decoding engine: tokens at cache slots -> logits, with per-slot inputs.

:class:`SlotInputs` holds what a layout attaches to each cache slot besides the token (position
ids that restart after ``[ROI2]``, super-resolution's cell ids and low-res sources, SPEC 1.2), so
a step only needs the slots it writes. :class:`DecodeStep` is the model call the engine makes for
the prefill, for forced runs and for each sampled token.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cogview.model import CogViewTransformer, KVCache


@dataclass(frozen=True)
class SlotInputs:
    """Model inputs indexed by cache slot over a whole sequence.

    Attributes:
        positions: ``[S]`` position id of each slot (None: the slot itself).
        cells: ``[S]`` 2-D cell id of the token each slot predicts (models with ``cell_embeddings``).
        sources: ``[R, S, 9]`` low-res neighbourhood per row (models with ``cell_sources``).
    """

    positions: torch.Tensor | None = None
    cells: torch.Tensor | None = None
    sources: torch.Tensor | None = None

    def to(self, device: torch.device) -> SlotInputs:
        return SlotInputs(*(None if t is None else t.to(device) for t in (self.positions, self.cells, self.sources)))

    def expand(self, n: int) -> SlotInputs:
        """Row r -> rows ``r*n .. r*n+n-1`` (as :meth:`KVCache.expand`); shared inputs stay shared."""
        sources = None if self.sources is None else self.sources.repeat_interleave(n, dim=0)
        return SlotInputs(self.positions, self.cells, sources)

    def at(self, slots: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Keyword inputs of the model for tokens at ``slots`` (``[T]`` shared or ``[R, T]`` per row)."""
        sources = self.sources
        if sources is not None:
            if slots.dim() == 1:
                sources = sources[:, slots]  # [R, T, 9]
            else:
                rows = torch.arange(sources.shape[0], device=slots.device)[:, None]  # [R, 1]
                sources = sources[rows, slots]  # [R, T, 9]
        return {
            "positions": slots if self.positions is None else self.positions[slots],
            "cells": None if self.cells is None else self.cells[slots],
            "sources": sources,
        }


# Batch sizes a compiled step is specialised for: a batch is padded up to the next one, so a run
# compiles a handful of graphs instead of one per batch size.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


# Inductor settings of a compiled CPU step. The step's matrix-vector products dominate it, and the
# BLAS ones ran 3-5x below the memory bandwidth here (AMD EPYC, MKL); with frozen weights
# max-autotune may pick its own C++ GEMM kernels instead (measured: half the step's CPU time).
CPU_COMPILE_MODE = "max-autotune-no-cudagraphs"


def _frozen(compiled: Callable[..., torch.Tensor], *args: object) -> torch.Tensor:
    """Call ``compiled`` with inductor's weight freezing on, for this call only.

    Freezing is read outside ``torch.compile(options=...)``'s scope (given there, the weights stayed
    graph inputs and the GEMMs BLAS calls), so it is set around each call: a call may compile (a
    new batch size), and nothing outlives it.
    """
    from torch._inductor import config  # only where a step is compiled: importing it is not free

    with config.patch(freezing=True):
        return compiled(*args)


def bucket(n: int) -> int:
    """The batch size ``n`` rows are padded to under a compiled step (``n`` itself beyond the buckets)."""
    return next((b for b in BATCH_BUCKETS if b >= n), n)


def _one_token(
    model: CogViewTransformer,
    cache: KVCache,
    tokens: torch.Tensor,
    slots: torch.Tensor,
    positions: torch.Tensor,
    cells: torch.Tensor | None,
    sources: torch.Tensor | None,
    logit_ids: range | None = None,
) -> torch.Tensor:
    """A fixed-shape step: the whole cache is read, masked by ``slots`` (no ``kv_len`` slicing)."""
    return model(tokens, positions, cache, slots, kv_len=None, cells=cells, sources=sources, logit_ids=logit_ids)


class DecodeStep:
    """``feed(cache, tokens, slots, inputs, kv_len) -> logits``: write K/V at ``slots`` and read logits.

    Eager (the default) attends to the first ``kv_len`` slots only: on a CPU that is the fastest,
    and it is what the images of earlier versions were made with. ``static=True`` reads the whole
    preallocated cache with a mask derived from ``slots``, so every one-token step of a batch has
    the same shapes; ``compile=True`` (implies static) wraps that step in
    ``torch.compile(fullgraph=True)`` (``backend``: inductor by default; "aot_eager" checks
    tracing without code generation). ``cuda_graph=True`` (CUDA only, implies static) captures
    the step once per cache and shape in a ``torch.cuda.CUDAGraph`` and replays it, so a step costs
    one launch instead of hundreds; the graph is bound to the cache's buffers, so a new cache (a
    new chunk) is captured anew. Multi-token feeds (prefill, forced runs) stay eager.

    On a CPU, inductor compiles with :data:`CPU_COMPILE_MODE` and frozen weights unless ``mode`` is
    given: autotuned C++ GEMMs, which beat the BLAS matrix-vector products that bound a
    decode step there (docs/generation.md, "Speed"). Frozen means the weights are copied into the
    compiled code: a step compiled before the model's weights change keeps the old ones.
    """

    def __init__(
        self,
        model: CogViewTransformer,
        *,
        static: bool = False,
        compile: bool = False,
        backend: str = "inductor",
        mode: str | None = None,
        cuda_graph: bool = False,
    ) -> None:
        if cuda_graph and model.tok_embeddings.weight.device.type != "cuda":
            raise ValueError("cuda_graph=True needs the model on a CUDA device")
        self.model = model
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, _Graph] = {}
        self.static = static or compile or cuda_graph
        self.compiled = compile
        self._step: Callable[..., torch.Tensor] = _one_token
        if compile:
            cpu = backend == "inductor" and mode is None and model.tok_embeddings.weight.device.type == "cpu"
            mode = CPU_COMPILE_MODE if cpu else mode
            compiled = torch.compile(_one_token, fullgraph=True, dynamic=False, backend=backend, mode=mode)
            self._step = functools.partial(_frozen, compiled) if cpu else compiled

    def feed(
        self,
        cache: KVCache,
        tokens: torch.Tensor,
        slots: torch.Tensor,
        inputs: SlotInputs | None,
        kv_len: int | None,
        logit_ids: range | None = None,
    ) -> torch.Tensor:
        """Logits ``[R, T, V]`` of ``tokens`` ``[R, T]`` written at ``slots`` (``[T]`` or ``[R, T]``);
        ``[R, T, len(logit_ids)]`` for a range of ids (only those rows of the output layer run)."""
        extras = (inputs or SlotInputs()).at(slots)
        positions = extras.pop("positions")
        if self.cuda_graph and tokens.shape[1] == 1:
            return self._replay(cache, logit_ids, tokens, slots, positions, extras["cells"], extras["sources"])
        if self.static and tokens.shape[1] == 1:
            return self._step(
                self.model, cache, tokens, slots, positions, extras["cells"], extras["sources"], logit_ids
            )
        return self.model(tokens, positions, cache, slots, kv_len=kv_len, logit_ids=logit_ids, **extras)

    __call__ = feed

    def _replay(self, cache: KVCache, logit_ids: range | None, *args: torch.Tensor | None) -> torch.Tensor:
        key = (id(cache.k), logit_ids, *(None if a is None else (tuple(a.shape), a.dtype) for a in args))
        graph = self._graphs.get(key)
        if graph is None or graph.cache is not cache:
            self._graphs = {k: g for k, g in self._graphs.items() if g.cache_alive()}
            graph = self._graphs[key] = _Graph(self._step, self.model, cache, args, logit_ids)
            return graph.output.clone()  # the capture's warm-up already computed this step
        return graph.replay(args)


class _Graph:
    """One captured fixed-shape step: static input buffers, the graph, its output buffer."""

    def __init__(
        self,
        step: Callable[..., torch.Tensor],
        model: CogViewTransformer,
        cache: KVCache,
        args: tuple,
        logit_ids: range | None,
    ) -> None:
        self._cache = weakref.ref(cache)
        self.inputs = tuple(None if a is None else a.clone() for a in args)
        args = (*self.inputs, logit_ids)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the capture (allocator, lazy kernel init)
            for _ in range(2):  # writing the same K/V at the same slots again is harmless
                self.output = step(model, cache, *args)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = step(model, cache, *args)
        self.graph.replay()

    @property
    def cache(self) -> KVCache | None:
        return self._cache()

    def cache_alive(self) -> bool:
        return self._cache() is not None

    def replay(self, args: tuple) -> torch.Tensor:
        for buffer, value in zip(self.inputs, args, strict=True):
            if buffer is not None:
                buffer.copy_(value)
        self.graph.replay()
        return self.output.clone()
