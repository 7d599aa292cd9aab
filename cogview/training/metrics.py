"""The metrics log of a training run: ``OUT/metrics.jsonl``, one row per logged step.

:class:`Metrics` sums a logging interval's steps; its sums go into checkpoints, so a resumed run
logs exactly the rows of an uninterrupted one (:func:`rewind_metrics` drops rows a killed run
wrote past its last checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from cogview.training.step import StepResult

METRICS_NAME = "metrics.jsonl"


class Metrics:
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


def rewind_metrics(path: Path, step: int) -> None:
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


__all__ = ["METRICS_NAME", "Metrics", "read_metrics", "rewind_metrics"]
