"""Optimiser parameter groups (SPEC 4.3) and the PIL loss plot."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cogview.model import PRESETS, CogViewTransformer
from cogview.plotting import nice_ticks, plot_loss_curves
from cogview.training.optim import lr_at, param_groups


def test_weight_decay_on_all_weights_except_biases_and_layernorms() -> None:
    model = CogViewTransformer(PRESETS["tiny"])
    decay, no_decay = param_groups(model, 0.04)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    plain = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.04 and no_decay["weight_decay"] == 0.0
    assert {"tok_embeddings.weight", "pos_embeddings.weight", "layers.0.attention.wqkv.weight"} <= decayed
    assert all(n.endswith(".bias") or "norm" in n for n in plain)
    assert "layers.0.attention_norm.weight" in plain and "layers.0.feed_forward.w1.bias" in plain
    assert len(decayed) + len(plain) == len(list(model.parameters()))


def test_schedule_warms_up_then_decays_to_a_tenth() -> None:
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(100, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.55)


def test_loss_plot_is_a_png_with_gaps_for_skipped_steps(tmp_path: Path) -> None:
    rows = [
        {"step": s, "loss": (None if s == 30 else 5.0 / s), "image_loss": 4.0 / s} for s in range(10, 101, 10)
    ]
    plot_loss_curves(rows, tmp_path / "loss.png")
    image = Image.open(tmp_path / "loss.png")
    assert image.size == (800, 480) and len(image.getcolors(10_000)) > 3
    assert nice_ticks(0.13, 0.97) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(10, 100) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(2.03, 6.99) == [2, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_loss_curves([{"step": 1, "loss": None}], tmp_path / "x.png")
