"""Loss curves as PNG files, drawn with PIL alone (matplotlib is not a dependency).

Training writes ``loss.png`` from its ``metrics.jsonl`` rows so a run can be judged at a glance;
the plot is deliberately plain: lines, axes with round-number ticks, a legend. ``None`` or
non-finite values (skipped steps) leave gaps in a line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round numbers (1, 2 or 5 times a power of ten apart) from just below ``lo`` to just above ``hi``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got [{lo}, {hi}]")
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _label(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.2e}"


def plot_series(
    series: Mapping[str, Sequence[tuple[float, float | None]]],
    path: str | os.PathLike,
    *,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "loss",
    size: tuple[int, int] = (800, 480),
) -> None:
    """Draw named ``(x, y)`` series as lines and save a PNG to ``path``."""
    points = [(x, y) for s in series.values() for x, y in s if y is not None and math.isfinite(y)]
    if not points:
        raise ValueError("nothing to plot: every series is empty or non-finite")
    width, height = size
    left, right, top, bottom = 70, 20, 36, 50
    font = ImageFont.load_default(size=13)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xticks, yticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x0, x1 = min(xticks[0], min(xs)), max(xticks[-1], max(xs))
    y0, y1 = min(yticks[0], min(ys)), max(yticks[-1], max(ys))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (width - left - right),
            height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom),
        )

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for t in yticks:
        _, y = px(x0, t)
        draw.line([(left, y), (width - right, y)], fill=(230, 230, 230))
        draw.text((left - 6, y), _label(t), fill="black", font=font, anchor="rm")
    for t in xticks:
        x, _ = px(t, y0)
        draw.line([(x, top), (x, height - bottom)], fill=(230, 230, 230))
        draw.text((x, height - bottom + 6), _label(t), fill="black", font=font, anchor="mt")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for i, (name, s) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        for run in _finite_runs(s):
            line = [px(x, y) for x, y in run]
            if len(line) == 1:
                cx, cy = line[0]
                draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=color)
            else:
                draw.line(line, fill=color, width=2)
        ly = top + 8 + 16 * i
        draw.line([(width - right - 150, ly), (width - right - 126, ly)], fill=color, width=3)
        draw.text((width - right - 120, ly), name, fill="black", font=font, anchor="lm")
    draw.text((width / 2, 10), title, fill="black", font=font, anchor="mt")
    draw.text(((left + width - right) / 2, height - 16), xlabel, fill="black", font=font, anchor="mm")
    draw.text((12, top - 22), ylabel, fill="black", font=font, anchor="lt")
    image.save(path, format="PNG")


def _finite_runs(s: Iterable[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in s:
        if y is None or not math.isfinite(y):
            runs.append([])
        else:
            runs[-1].append((x, y))
    return [r for r in runs if r]


def plot_loss_curves(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    keys: Sequence[str] = ("loss", "image_loss", "text_loss"),
    title: str = "training loss",
) -> None:
    """Plot ``keys`` of metrics rows (each with a ``step``) against the step."""
    series = {
        k: [(float(r["step"]), r.get(k)) for r in rows]
        for k in keys
        if any(r.get(k) is not None for r in rows)
    }
    plot_series(series, path, title=title)


__all__ = ["nice_ticks", "plot_loss_curves", "plot_series"]
