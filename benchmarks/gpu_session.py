"""One lent-GPU session: every CUDA check of the project in one time-boxed run, results under --out.

A GPU is lent for minutes, once, so each part runs in its own process with a timeout (one failure
or hang does not cost the rest), and the text-to-image training stage at the end takes whatever
time is left: a short calibration run measures seconds per step on this machine, then the stage
runs with as many steps as fit (the lr schedule is fitted to them, not cut off).

1. the environment (nvidia-smi, torch, CUDA);
2. ``gpu_fsdp_4b.py``: cogview-4b training step, FSDP2 + bf16 + activation checkpointing;
3. ``gpu_original_4b.py``: cogview-4b bf16 decode at batch 1 and 8 against the memory floor;
4. ``gpu_default_model.py``: the shipped model's jobs on the GPU, fp32 and bf16;
5. a text-to-image stage (``--train-config``), packed with its loss curve into ``t2i_stage.tar``.

    python benchmarks/gpu_session.py --out $OUT                       # on the GPU machine
    python benchmarks/gpu_session.py --out /tmp/rehearsal --device cpu --preset tiny \\
        --budget 240 --train-set batch_size=4 --max-train-steps 40    # rehearsal on a CPU

Writes ``gpu_session.json`` (each part's exit code and seconds, the calibration and the steps
chosen) and ``session.log`` (everything the parts printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION_STEPS = 150


class Session:
    """The clock, the log and the record of one run of the parts."""

    def __init__(self, out: Path, budget: float) -> None:
        self.out, self.deadline = out, time.monotonic() + budget
        self.log = out / "session.log"
        self.record: dict[str, Any] = {"parts": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> int:
        """Run one part, its output appended to the log; a timeout ends it (exit code 124)."""
        timeout = max(1.0, min(timeout, self.left()))
        t0 = time.monotonic()
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"\n=== {name}: {' '.join(cmd)} (timeout {timeout:.0f} s)\n")
            f.flush()
            try:
                rc = subprocess.run(
                    cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, env=env
                ).returncode
            except subprocess.TimeoutExpired:
                rc = 124
        seconds = round(time.monotonic() - t0, 1)
        self.record["parts"][name] = {"rc": rc, "seconds": seconds}
        print(f"{name}: rc {rc} in {seconds} s ({self.left():.0f} s left)", flush=True)
        self.save()
        return rc

    def save(self) -> None:
        (self.out / "gpu_session.json").write_text(json.dumps(self.record, indent=2) + "\n", encoding="utf-8")


def seconds_per_step(run_dir: Path, tokens_per_step: int) -> float:
    """From the calibration run's metrics: the median of its logged rows after the first."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    rates = [r["tokens_per_s"] for r in rows[1:]] or [r["tokens_per_s"] for r in rows]
    return tokens_per_step / statistics.median(rates)


def step_size(config: Path, overrides: list[str]) -> tuple[int, float]:
    """Tokens of one optimizer step of the stage, as the loop counts them, and the steps of one
    epoch of its data (after overrides)."""
    from cogview.cli.common import parse_overrides
    from cogview.config_io import read_config_file
    from cogview.data.shards import open_data
    from cogview.training.batches import BatchSource
    from cogview.training.config import TrainConfig, apply_overrides

    cfg = TrainConfig.from_dict(apply_overrides(read_config_file(str(config)), parse_overrides(overrides)))
    data = open_data(cfg.data)
    tokens = sum(b.n_tokens for b in BatchSource(data, cfg).step_batches(0))
    return tokens, len(data) / (cfg.batch_size * cfg.grad_accum)


def train_stage(s: Session, args: argparse.Namespace, py: str) -> None:
    """Calibrate, fit the steps to the time left, train, and pack the result."""
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    cal, stage = work / "calibration", work / "stage"
    base = [py, "-m", "cogview", "train", "--config", args.train_config]
    sets = [f"device={args.device}", *args.train_set]
    env = dict(os.environ)
    cal_sets = [*sets, f"steps={CALIBRATION_STEPS}", "log_every=50", "checkpoint_every=100000"]
    rc = s.run("t2i_calibration", [*base, "--out", str(cal), "--set", *cal_sets], 120, env)
    if rc != 0:
        return
    tokens, epoch_steps = step_size(Path(args.train_config), cal_sets)
    per_step = seconds_per_step(cal, tokens)
    startup = s.record["parts"]["t2i_calibration"]["seconds"] - CALIBRATION_STEPS * per_step
    room = s.left() - args.reserve - max(startup, 0.0)
    cap = min(args.max_train_steps, args.max_train_epochs * epoch_steps)
    steps = int(min(cap, room / (per_step * 1.1)) // 100 * 100)
    s.record["t2i_stage"] = {
        "seconds_per_step": round(per_step, 4),
        "startup_s": round(startup, 1),
        "steps": steps,
        "epochs": round(steps / epoch_steps, 2),
    }
    s.save()
    if steps < 100:
        print(f"t2i stage: only {room:.0f} s left, {per_step:.3f} s per step: not started", flush=True)
        return
    s.run("t2i_stage", [*base, "--out", str(stage), "--set", *sets, f"steps={steps}"], s.left() - 20, env)
    if not (stage / "model").is_dir():  # cut off: keep the last checkpoint's weights
        ckpts = sorted((stage / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        if ckpts:
            s.run(
                "t2i_consolidate",
                [py, "-m", "cogview", "consolidate", str(ckpts[-1]), "--out", str(stage / "model")],
                60,
            )
    with tarfile.open(s.out / "t2i_stage.tar", "w") as tar:
        for name in ("model", "metrics.jsonl", "train_config.json", "loss.png"):
            if (stage / name).exists():
                tar.add(stage / name, arcname=name)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="results folder ($OUT on the device machine)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--preset", default="cogview-4b", help="model of the 4B checks (tiny for a rehearsal)")
    p.add_argument("--budget", type=float, default=480, help="seconds for the whole session (default 480)")
    p.add_argument("--reserve", type=float, default=25, help="seconds kept back for packing (default 25)")
    p.add_argument("--train-config", default="configs/default-t2i-continue4.json")
    p.add_argument("--train-set", nargs="*", default=[], help="extra KEY=VALUE overrides of the stage")
    p.add_argument("--max-train-steps", type=int, default=12000)
    p.add_argument(
        "--max-train-epochs",
        type=float,
        default=3.0,
        help="at most this many passes over the stage's data (default 3: 10 memorised the training images)",
    )
    p.add_argument("--work", default="/tmp/cogview-gpu-session", help="scratch folder of the training runs")
    p.add_argument("--skip", nargs="*", default=[], choices=["fsdp", "decode", "default", "train"])
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    s = Session(args.out, args.budget)
    py = sys.executable
    tiny = args.preset != "cogview-4b"
    s.run(
        "environment",
        [
            "sh",
            "-c",
            "nvidia-smi || true; "
            + py
            + " -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())'",
        ],
        30,
    )
    if "fsdp" not in args.skip:
        fsdp = [py, "benchmarks/gpu_fsdp_4b.py", "--preset", args.preset, "--device", args.device]
        s.run("fsdp_4b", [*fsdp, "--out", str(args.out / "gpu_fsdp_4b.json")], 150)
    if "decode" not in args.skip:
        dec = [py, "benchmarks/gpu_original_4b.py", "--preset", args.preset, "--device", args.device]
        # 256 codes per run, one run: 1,024 x 2 took over 150 s on an H200 (63 ms per step).
        extra = ["--steps", "16" if tiny else "256"]
        s.run(
            "decode_4b",
            [*dec, "--repeats", "1", *extra, "--out", str(args.out / "gpu_original_4b.json")],
            150,
        )
    if "default" not in args.skip:
        dm = [py, "benchmarks/gpu_default_model.py", "--device", args.device]
        extra = ["--batch", "2", "--dtypes", "float32"] if tiny else []
        s.run("default_model", [*dm, *extra, "--out", str(args.out / "gpu_default_model.json")], 120)
    if "train" not in args.skip:
        train_stage(s, args, py)
    s.record["seconds"] = round(args.budget - s.left(), 1)
    s.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
