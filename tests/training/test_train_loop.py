"""Transformer training on real (tiny) token shards: exact resume, kills, NaN guard, accumulation."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from small_parts import small_text_tokenizer

from cogview.cli import main
from cogview.data.prepare import prepare
from cogview.data.shards import TokenShards
from cogview.model import CogViewTransformer
from cogview.serialization import MODEL_INFO_NAME
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vocab import Vocabulary
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS
from cogview.training import loop
from cogview.training.batches import BatchSource, make_batch
from cogview.training.checkpoint import (
    checkpoint_dirs,
    latest_checkpoint,
    load_state,
    save_checkpoint,
)
from cogview.training.config import TrainConfig
from cogview.training.loop import TrainingDiverged, train
from cogview.training.metrics import read_metrics
from cogview.training.optim import param_groups
from cogview.training.step import train_step

MODEL = {"preset": "tiny", "dim": 32, "n_heads": 2, "max_seq_len": 96}


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Steps run directly (not through train) use one thread too: fast and deterministic on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """128 shapes rows (64 scenes x 2 languages) of 84 tokens from a random tiny image tokenizer."""
    out = tmp_path_factory.mktemp("shards") / "shapes"
    torch.manual_seed(0)
    prepare(
        "shapes",
        out,
        image_tokenizer=ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"])),
        text_tokenizer=small_text_tokenizer(),
        max_examples=64,
        text_budget=16,
        progress=False,
    )
    return out


def config(shards: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        data=str(shards),
        model=MODEL,
        steps=30,
        batch_size=4,
        lr=3e-3,
        warmup=3,
        log_every=1,
        checkpoint_every=5,
        keep_last=2,
        seed=1,
        threads=1,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig.from_dict(base)


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out)]


def new_model(cfg: TrainConfig, shards_path: Path) -> CogViewTransformer:
    s = TokenShards.open(shards_path)
    torch.manual_seed(cfg.seed)
    return CogViewTransformer(cfg.transformer_config(s.vocab.size, s.seq_len)).train()


# --- exact resume ---------------------------------------------------------------------------------


def test_resume_is_bit_identical_with_dropout_and_caption_dropout(shards: Path, tmp_path: Path) -> None:
    cfg = config(shards, steps=16, model={**MODEL, "dropout": 0.1}, caption_dropout=0.3, log_every=2)
    full = train(cfg, tmp_path / "full", progress=False)
    assert full["finished"] and full["step"] == 16
    stopped = train(cfg, tmp_path / "part", max_steps=7, progress=False)
    assert not stopped["finished"] and latest_checkpoint(tmp_path / "part").name == "step_00000007"
    train(cfg, tmp_path / "part", resume=True, progress=False)
    assert losses(tmp_path / "part") == losses(tmp_path / "full")
    assert [r["step"] for r in read_metrics(tmp_path / "part")] == list(range(2, 17, 2))
    a = CogViewTransformer.from_pretrained(tmp_path / "full" / "model").state_dict()
    b = CogViewTransformer.from_pretrained(tmp_path / "part" / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_sigkill_between_checkpoints(shards: Path, tmp_path: Path) -> None:
    cfg = config(
        shards, steps=2000, checkpoint_every=25, model={**MODEL, "dropout": 0.1}, caption_dropout=0.2
    )
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cogview", "train", "--config", str(cfg_file), "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            ckpt = latest_checkpoint(killed)
            if ckpt is not None and (killed / "metrics.jsonl").exists():
                rows = (killed / "metrics.jsonl").read_text().splitlines()
                if len(rows) > int(ckpt.name[5:]) + 3:  # logged past the checkpoint: kill mid-interval
                    break
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpt_step = int(latest_checkpoint(killed).name[5:])
    logged = len((killed / "metrics.jsonl").read_text().splitlines())
    assert logged > ckpt_step  # the kill left steps after the checkpoint that resume must redo
    stop = ckpt_step + 12
    train(cfg, killed, resume=True, max_steps=stop, progress=False)
    train(cfg, tmp_path / "reference", max_steps=stop, progress=False)
    resumed, reference = losses(killed), losses(tmp_path / "reference")
    assert len(resumed) == stop and resumed == reference


def test_atomic_checkpoint_survives_a_crash_during_save(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(shards, steps=12, checkpoint_every=4)
    real_save = loop.save_model_folder
    calls = {"n": 0}

    def crash_on_second_save(model: CogViewTransformer, directory: Path, info: dict) -> None:
        calls["n"] += 1
        real_save(model, directory, info)
        if calls["n"] == 2:  # weights half written into the temporary folder, then the process "dies"
            raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(loop, "save_model_folder", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path, progress=False)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000004"]
    latest = latest_checkpoint(tmp_path)
    assert load_state(latest)["step"] == 4
    CogViewTransformer.from_pretrained(latest)
    monkeypatch.setattr(loop, "save_model_folder", real_save)
    train(cfg, tmp_path, resume=True, progress=False)
    train(cfg, tmp_path / "reference", progress=False)
    assert losses(tmp_path) == losses(tmp_path / "reference")
    assert not list((tmp_path / "checkpoints").glob(".tmp_*"))  # the stale temporary folder is gone


def test_save_checkpoint_callback_error_keeps_previous_latest(tmp_path: Path) -> None:
    model = CogViewTransformer(config(Path("x")).transformer_config(128, 16))
    save_checkpoint(tmp_path, 1, model.save_pretrained, {"note": "good"})

    def broken(directory: Path) -> None:
        (directory / "config.json").write_text("{")
        raise OSError("disk full")

    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, broken, {"note": "bad"})
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    assert load_state(latest_checkpoint(tmp_path))["note"] == "good"


# --- outputs ------------------------------------------------------------------------------------


def test_outputs_model_folder_metrics_and_plot(shards: Path, tmp_path: Path) -> None:
    cfg = config(shards, steps=10, log_every=3, keep_last=1)
    summary = train(cfg, tmp_path, progress=False)
    assert summary["finished"] and summary["skipped_steps"] == 0
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [3, 6, 9, 10]
    required = {"step", "loss", "lr", "tokens_per_s", "grad_norm", "image_loss", "text_loss", "skipped_steps"}
    assert required <= set(rows[0]) and all(math.isfinite(r["loss"]) for r in rows)
    model = CogViewTransformer.from_pretrained(tmp_path / "model")
    manifest = TokenShards.open(shards).manifest
    info = json.loads((tmp_path / "model" / MODEL_INFO_NAME).read_text())
    assert (
        info["vocab"] == manifest["vocab"]
        and model.config.vocab_size == Vocabulary.from_dict(info["vocab"]).size
    )
    assert info["text_tokenizer"]["fingerprint"] == small_text_tokenizer().fingerprint
    assert info["image_tokenizer"] == manifest["image_tokenizer"] and info["step"] == 10
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000010"]
    state = load_state(latest_checkpoint(tmp_path))
    assert {"optimizer", "rng", "train_config", "sequences_seen"} <= set(state)
    assert state["sequences_seen"] == 40
    assert json.loads((tmp_path / "train_config.json").read_text()) == cfg.to_dict()
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_refuses_other_config_and_fresh_run_refuses_used_folder(shards: Path, tmp_path: Path) -> None:
    train(config(shards, steps=6), tmp_path, max_steps=3, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(config(shards, steps=6, lr=1e-3), tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(config(shards, steps=6), tmp_path, progress=False)
    # checkpoint cadence may change on resume
    assert train(config(shards, steps=6, checkpoint_every=2), tmp_path, resume=True, progress=False)[
        "finished"
    ]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_train(shards: Path, tmp_path: Path, precision: str) -> None:
    summary = train(config(shards, steps=12, precision=precision), tmp_path, progress=False)
    rows = read_metrics(tmp_path)
    assert summary["finished"] and math.isfinite(rows[-1]["loss"])
    # fp16 skips its first steps while the dynamic loss scale comes down from 2**16 (as DeepSpeed)
    assert ("loss_scale" in rows[-1]) == (precision == "fp16")
    assert summary["skipped_steps"] == 0 if precision == "bf16" else 0 < summary["skipped_steps"] < 12


# --- the step: NaN guard, accumulation, learning ----------------------------------------------


def _nan_logits_on(calls: set[int]) -> Any:
    count = {"n": 0}

    def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        count["n"] += 1
        return output * float("nan") if count["n"] in calls else None

    return hook


def test_nan_step_is_skipped_counted_and_training_continues(shards: Path, tmp_path: Path) -> None:
    cfg = config(shards, steps=8)
    summary = train(
        cfg, tmp_path, progress=False, on_model=lambda m: m.register_forward_hook(_nan_logits_on({3}))
    )
    rows = read_metrics(tmp_path)
    assert summary["finished"] and summary["skipped_steps"] == 1
    assert rows[2]["loss"] is None and rows[2]["skipped_steps"] == 1 and rows[-1]["skipped_steps"] == 1
    assert all(math.isfinite(r["loss"]) for i, r in enumerate(rows) if i != 2)
    assert all(
        torch.isfinite(p).all() for p in CogViewTransformer.from_pretrained(tmp_path / "model").parameters()
    )


def test_too_many_bad_steps_stop_with_a_clear_message(shards: Path, tmp_path: Path) -> None:
    cfg = config(shards, steps=20, max_bad_steps=3)
    with pytest.raises(TrainingDiverged, match=r"stopped at step 5: the last 3 steps had a NaN/inf loss.*lr"):
        train(
            cfg,
            tmp_path,
            progress=False,
            on_model=lambda m: m.register_forward_hook(_nan_logits_on(set(range(3, 100)))),
        )
    assert read_metrics(tmp_path)[-1]["skipped_steps"] == 3
    assert latest_checkpoint(tmp_path) is None  # nothing was saved after the first (good) steps


def test_cli_trains_from_yaml_with_overrides_and_reports_bad_values(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(f"data: {shards}\nmodel: {{preset: tiny, max_seq_len: 96}}\nsteps: 2\nthreads: 1\n")
    out = str(tmp_path / "o")
    assert main(["train", "--config", str(cfg_file), "--out", out, "--set", "batch_size=0"]) == 2
    assert "batch_size must be a positive integer, got 0" in capsys.readouterr().err
    assert (
        main(["train", "--config", str(cfg_file), "--out", out, "--set", "model.dim=48", "bacth_size=2"]) == 2
    )
    assert "unknown training config key(s) ['bacth_size']" in capsys.readouterr().err
    assert (
        main(["train", "--config", str(cfg_file), "--out", out, "--set", "model.dim=48", "batch_size=2"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["finished"]
    assert CogViewTransformer.from_pretrained(Path(out) / "model").config.dim == 48


def test_skipped_step_leaves_parameters_and_optimizer_untouched(shards: Path) -> None:
    cfg = config(shards)
    model = new_model(cfg, shards)
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2)
    batches = BatchSource(TokenShards.open(shards), cfg).step_batches(0)
    train_step(model, optimizer, batches)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    handle = model.register_forward_hook(_nan_logits_on({1}))
    result = train_step(model, optimizer, batches)
    handle.remove()
    assert result.skipped == "non-finite loss"
    w = model.layers[0].attention.wqkv.weight
    hook = w.register_hook(lambda g: g * float("inf"))
    result = train_step(model, optimizer, batches, grad_clip=1.0)
    hook.remove()
    assert result.skipped == "non-finite gradient"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], opt_before)


def test_loss_falls_on_a_fixed_batch(shards: Path) -> None:
    cfg = config(shards)
    model = new_model(cfg, shards)
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-2, betas=(0.9, 0.95))
    batches = BatchSource(TokenShards.open(shards), cfg).step_batches(0)
    curve = [train_step(model, optimizer, batches, grad_clip=1.0).loss for _ in range(20)]
    assert curve[-1] < 0.5 * curve[0], curve


def test_grad_accumulation_equals_one_big_batch(shards: Path) -> None:
    data = TokenShards.open(shards)
    runs = []
    for batch_size, grad_accum in ((4, 1), (2, 2), (1, 4)):
        cfg = config(shards, batch_size=batch_size, grad_accum=grad_accum)
        model = new_model(cfg, shards)
        optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
        source = BatchSource(data, cfg)
        rows = np.concatenate([source.indices(3, m) for m in range(grad_accum)])
        assert np.array_equal(rows, BatchSource(data, config(shards)).indices(3, 0))  # same sequences
        result = train_step(model, optimizer, source.step_batches(3), grad_clip=1.0)
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        runs.append((result, grads))
    # Gradients (after clipping) agree to 1e-6. Parameters after the AdamW step are not compared:
    # Adam's first update is about lr * sign(g), which float noise flips where g is ~0.
    (big, big_grads), *others = runs
    for result, grads in others:
        assert result.loss == pytest.approx(big.loss, abs=1e-6)
        assert result.grad_norm == pytest.approx(big.grad_norm, rel=1e-6)
        assert (result.tokens, result.image_count, result.text_count) == (
            big.tokens,
            big.image_count,
            big.text_count,
        )
        assert torch.allclose(grads, big_grads, atol=1e-6, rtol=0)


# --- batches --------------------------------------------------------------------------------------


def test_batches_are_a_pure_function_of_seed_and_step_and_cover_each_epoch(shards: Path) -> None:
    data = TokenShards.open(shards)
    a, b = BatchSource(data, config(shards)), BatchSource(data, config(shards))
    assert np.array_equal(a.indices(7, 0), b.indices(7, 0))
    assert not np.array_equal(a.indices(7, 0), BatchSource(data, config(shards, seed=2)).indices(7, 0))
    epoch = np.concatenate([a.indices(s, 0) for s in range(len(data) // 4)])
    assert sorted(epoch.tolist()) == list(range(len(data)))


def test_caption_dropout_empties_the_text_of_drawn_rows(shards: Path) -> None:
    data = TokenShards.open(shards)
    vocab = data.vocab
    none = BatchSource(data, config(shards, caption_dropout=0.0)).step_batches(0)[0]
    every = BatchSource(data, config(shards, caption_dropout=1.0)).step_batches(0)[0]
    base = vocab.token_id("[BASE]")
    assert (none.inputs[:, 1] != base).all()  # captions present
    assert (every.inputs[:, 1] == base).all()  # [ROI1] [BASE] [BOI1] codes ...
    assert every.loss_mask.sum() < none.loss_mask.sum()
    half = BatchSource(data, config(shards, caption_dropout=0.5, batch_size=16))
    drops = half.caption_drops(5)
    assert torch.equal(drops, half.caption_drops(5)) and 0 < int(drops.sum()) < 16


def test_make_batch_shifts_and_marks_text_positions(shards: Path) -> None:
    data = TokenShards.open(shards)
    tokens = torch.from_numpy(data.rows(np.array([0, 1])))
    batch = make_batch(tokens, data.vocab)
    assert torch.equal(batch.inputs, tokens[:, :-1]) and torch.equal(batch.targets, tokens[:, 1:])
    assert torch.equal(batch.positions[0], torch.arange(tokens.shape[1] - 1))
    is_image = data.vocab.is_image(batch.inputs)
    pad = batch.inputs == data.vocab.token_id("[PAD]")
    assert torch.equal(batch.text_mask, ~is_image & ~pad)
    assert torch.equal(batch.loss_mask.bool(), batch.targets != data.vocab.token_id("[PAD]"))


def test_cli_help() -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0


def test_a_multi_task_mixture_gives_one_model_that_serves_both_jobs(tmp_path: Path) -> None:
    # Text-to-image and caption rows of the same length (text budget 16 vs 15 + [EOT]) in one run:
    # the model's record names both tasks, so a pipeline serves text-to-image and captioning from it.
    from cogview.pipeline import CogViewPipeline

    torch.manual_seed(0)
    image = ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"]))
    common = dict(image_tokenizer=image, text_tokenizer=small_text_tokenizer(), max_examples=8, progress=False)
    prepare("shapes", tmp_path / "t2i", text_budget=16, **common)
    prepare("shapes", tmp_path / "i2t", tasks=("image_to_text",), text_budget=15, **common)
    data = [str(tmp_path / "t2i"), {"path": str(tmp_path / "i2t"), "repeat": 2}]
    train(config(tmp_path / "t2i", steps=2, data=data), tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "model" / MODEL_INFO_NAME).read_text())
    assert info["tasks"] == ["text_to_image", "image_to_text"]
    assert set(info["layouts"]) == {"text_to_image", "image_to_text"}
    pipe = CogViewPipeline.from_components(tmp_path / "run" / "model", small_text_tokenizer(), image)
    assert pipe.models["text_to_image"] is pipe.models["image_to_text"]
    assert len(pipe.caption(pipe.generate("a red circle", 1, seed=0), "en", max_tokens=3)) == 1


def test_a_mixture_of_folders_trains_and_resume_pins_the_repeats(shards: Path, tmp_path: Path) -> None:
    mixture = [{"path": str(shards), "repeat": 2}, str(shards)]
    cfg = config(shards, steps=6, data=mixture)
    train(cfg, tmp_path, max_steps=3, progress=False)
    other = config(shards, steps=6, data=[{"path": str(shards), "repeat": 3}, str(shards)])
    with pytest.raises(ValueError, match="not the ones"):
        train(other, tmp_path, resume=True, progress=False)
    assert train(cfg, tmp_path, resume=True, progress=False)["finished"]
