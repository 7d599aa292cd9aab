"""Distributed training on CPU (2 processes, gloo): DDP, ZeRO-1, FSDP2 and DeepSpeed ZeRO match the
single-process run with the same global batch, checkpoints reshard across world sizes and
strategies, and ``cogview consolidate`` turns a sharded checkpoint into a model folder.

Every two-process run goes through one ``torchrun`` job (tests/training/torchrun_jobs.py) built
by a module fixture; the tests then compare its outputs with single-process runs made here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from small_parts import small_text_tokenizer

from cogview.cli import main
from cogview.data.prepare import prepare
from cogview.model import CogViewTransformer
from cogview.pipeline import CogViewPipeline
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS
from cogview.training.checkpoint import checkpoint_dirs
from cogview.training.config import TrainConfig
from cogview.training.loop import train
from cogview.training.metrics import read_metrics
from cogview.training.sharded_checkpoint import is_sharded

ROOT = Path(__file__).resolve().parents[2]
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
STEPS = 10
CHECKPOINTING = "activation_checkpointing=true"
# grad_accum 2 x global micro-batch 4: each of the 2 ranks runs 2 micro-batches of 2 rows per step.
BASE: dict[str, Any] = dict(
    model={"preset": "tiny", "dim": 32, "n_heads": 2, "max_seq_len": 96},
    steps=STEPS,
    batch_size=4,
    grad_accum=2,
    lr=3e-3,
    warmup=3,
    log_every=1,
    checkpoint_every=5,
    keep_last=3,
    seed=1,
    threads=1,
    device="cpu",
)


@pytest.fixture(scope="module")
def image_tokenizer() -> ImageTokenizer:
    torch.manual_seed(0)
    return ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"]))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, image_tokenizer: ImageTokenizer) -> Path:
    """Shards, a config file, and the single-process reference run."""
    root = tmp_path_factory.mktemp("dist")
    prepare(
        "shapes",
        root / "shards",
        image_tokenizer=image_tokenizer,
        text_tokenizer=small_text_tokenizer(),
        max_examples=32,
        text_budget=16,
        progress=False,
    )
    (root / "cfg.json").write_text(json.dumps({**BASE, "data": str(root / "shards")}))
    train(config(root), root / "single", progress=False)
    return root


def config(root: Path, **kw: Any) -> TrainConfig:
    return TrainConfig.from_dict({**BASE, "data": str(root / "shards"), **kw})


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out)]


def rel_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) == STEPS, (a, b)
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def train_argv(root: Path, name: str, *extra: str) -> list[str]:
    return ["train", "--config", str(root / "cfg.json"), "--out", str(root / name), *extra]


def torchrun(root: Path, jobs: list[list[str]], name: str) -> None:
    """Run ``jobs`` (cogview argv lists) in one 2-process torchrun job on CPU."""
    (root / f"{name}.json").write_text(json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(ROOT / "tests" / "training" / "torchrun_jobs.py"), str(root / f"{name}.json")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.fixture(scope="module")
def torch_jobs(work: Path) -> Path:
    """The two-process runs: DDP, DDP + ZeRO-1, FSDP (stopped at 5 and resumed), FSDP resuming a
    single-process checkpoint (1 -> 2), FSDP in bf16 and fp16 (3 steps)."""
    train(config(work), work / "one_to_two", max_steps=5, progress=False)
    torchrun(
        work,
        [
            train_argv(work, "ddp", "--strategy", "ddp"),
            train_argv(work, "zero1", "--strategy", "ddp", "--set", "zero1=true"),
            train_argv(work, "fsdp", "--strategy", "fsdp", "--max-steps", "5", "--set", CHECKPOINTING),
            train_argv(work, "fsdp", "--strategy", "fsdp", "--resume"),
            train_argv(work, "one_to_two", "--strategy", "fsdp", "--resume"),
            *(
                train_argv(work, f"fsdp_{p}", "--strategy", "fsdp", "--set", "steps=3", f"precision={p}")
                for p in ("bf16", "fp16")
            ),
        ],
        "torch_jobs",
    )
    return work


def test_activation_checkpointing_changes_only_memory(work: Path) -> None:
    train(config(work, activation_checkpointing=True), work / "checkpointing", progress=False)
    assert losses(work / "checkpointing") == losses(work / "single")


def test_ddp_and_zero1_match_the_single_process_run(torch_jobs: Path) -> None:
    reference = losses(torch_jobs / "single")
    assert reference[-1] < reference[0]  # it trains
    assert rel_diff(losses(torch_jobs / "ddp"), reference) < 1e-5
    assert rel_diff(losses(torch_jobs / "zero1"), reference) < 1e-5
    assert is_sharded(checkpoint_dirs(torch_jobs / "ddp")[-1])


def test_fsdp_matches_and_resumes_at_the_same_world_size(torch_jobs: Path) -> None:
    """Steps 1-5 with activation checkpointing, 6-10 without: the same curve."""
    assert rel_diff(losses(torch_jobs / "fsdp"), losses(torch_jobs / "single")) < 1e-4
    assert [r["step"] for r in read_metrics(torch_jobs / "fsdp")] == list(range(1, STEPS + 1))


def test_fsdp_mixed_precision(torch_jobs: Path) -> None:
    """bf16: MixedPrecisionPolicy close to fp32; fp16: the sharded scaler skips steps while its scale falls."""
    reference = losses(torch_jobs / "single")[:3]  # the same lr for 3 steps (warmup)
    bf16 = losses(torch_jobs / "fsdp_bf16")
    assert max(abs(a - b) / b for a, b in zip(bf16, reference, strict=True)) < 1e-2
    fp16 = read_metrics(torch_jobs / "fsdp_fp16")
    assert [r["loss_scale"] for r in fp16] == [2.0**15, 2.0**14, 2.0**13]


def test_resume_one_process_run_on_two(torch_jobs: Path) -> None:
    """1 -> 2: a single-process checkpoint (safetensors + state.pt) continues under FSDP."""
    assert rel_diff(losses(torch_jobs / "one_to_two"), losses(torch_jobs / "single")) < 1e-4


def test_resume_two_process_run_on_one(torch_jobs: Path) -> None:
    """2 -> 1: the sharded FSDP checkpoint of step 5 continues in one plain process."""
    out = torch_jobs / "two_to_one"
    shutil.copytree(torch_jobs / "fsdp", out)
    for later in checkpoint_dirs(out)[1:]:
        shutil.rmtree(later)
    assert is_sharded(checkpoint_dirs(out)[-1])
    train(config(torch_jobs), out, resume=True, progress=False)
    assert rel_diff(losses(out), losses(torch_jobs / "single")) < 1e-4


def test_consolidate_gives_the_trained_model(
    torch_jobs: Path, image_tokenizer: ImageTokenizer, tmp_path: Path
) -> None:
    last = checkpoint_dirs(torch_jobs / "fsdp")[-1]
    assert main(["consolidate", str(last), "--out", str(tmp_path / "model")]) == 0
    consolidated = CogViewTransformer.from_pretrained(tmp_path / "model")
    trained = CogViewTransformer.from_pretrained(torch_jobs / "fsdp" / "model")  # gathered at the end
    tokens = torch.randint(0, consolidated.config.vocab_size, (2, 20))
    positions = torch.arange(20)
    with torch.no_grad():
        assert torch.equal(consolidated(tokens, positions), trained(tokens, positions))
    pipe = CogViewPipeline.from_components(tmp_path / "model", small_text_tokenizer(), image_tokenizer)
    assert pipe.transformer.config == trained.config


def test_strategies_need_torchrun_and_consolidate_needs_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="launch it with torchrun"):
        train(TrainConfig.from_dict({**BASE, "data": "shards", "strategy": "ddp"}), tmp_path, progress=False)
    assert main(["consolidate", str(tmp_path), "--out", str(tmp_path / "model")]) == 2
    assert "is not a training checkpoint" in capsys.readouterr().err


@pytest.mark.skipif(
    not HAS_DEEPSPEED,
    reason='DeepSpeed is experimental and not installed in CI (docs/scaling.md): pip install torch==2.13.0 -e ".[deepspeed]"',
)
def test_deepspeed_zero_matches_and_its_checkpoints_reshard(torch_jobs: Path) -> None:
    """ZeRO-2 matches the single-process run; a ZeRO-3 checkpoint of step 5 continues in one process."""
    root, ds = torch_jobs, ROOT / "configs" / "deepspeed"
    torchrun(
        root,
        [
            train_argv(
                root, "ds2", "--strategy", "deepspeed", "--set", f"deepspeed_config={ds / 'zero2.json'}"
            ),
            train_argv(
                root,
                "ds3",
                "--strategy",
                "deepspeed",
                "--max-steps",
                "5",
                "--set",
                f"deepspeed_config={ds / 'zero3.json'}",
            ),
        ],
        "ds_jobs",
    )
    reference = losses(root / "single")
    assert rel_diff(losses(root / "ds2"), reference) < 1e-4
    train(config(root), root / "ds3", resume=True, progress=False)
    assert rel_diff(losses(root / "ds3"), reference) < 1e-4
