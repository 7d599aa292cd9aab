"""One lent-GPU session: every CUDA check of the project in one time-boxed run, results under --out.

A GPU is lent for minutes, once, so each part runs in its own process with a timeout (one failure
or hang does not cost the rest), and the training stages at the end take whatever time is left:
short calibration runs measure seconds per step on this machine, then each stage runs with as
many steps as fit (the lr schedule is fitted to them, not cut off). ``--skip`` drops parts.

1. the environment (nvidia-smi, torch, CUDA);
2. ``gpu_decode.py``: the one decoding engine, eager against CUDA graphs, and the shipped jobs;
3. ``gpu_fsdp_4b.py``: cogview-4b training step, FSDP2 + bf16 + activation checkpointing;
4. ``gpu_original_4b.py``: cogview-4b bf16 decode at batch 1 and 8 against the memory floor;
5. ``gpu_default_model.py``: the shipped model's jobs on the GPU, fp32 and bf16;
6. training stages (``--train-config A.json B.json``), all at once on the one GPU, each packed
   with its loss curve into ``stages.tar``, which comes back in pieces (``cat stages.tar.* > stages.tar``).

    python benchmarks/gpu_session.py --out $OUT                       # on the GPU machine
    python benchmarks/gpu_session.py --out /tmp/rehearsal --device cpu --preset tiny \\
        --budget 240 --train-set batch_size=4 --max-train-steps 40    # rehearsal on a CPU

Writes ``gpu_session.json`` (each part's exit code and seconds, the calibration and the steps
chosen) and ``session.log`` (everything the parts printed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
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

    def run_many(self, name: str, cmds: dict[str, list[str]], timeout: float) -> dict[str, int]:
        """Run several commands at once (one GPU shared), each to its own log, appended to the
        session log when all have ended; past the timeout the ones left are killed (code 124)."""
        timeout = max(1.0, min(timeout, self.left()))
        t0 = time.monotonic()
        logs = {key: tempfile.TemporaryFile("w+", encoding="utf-8") for key in cmds}
        procs = {
            key: subprocess.Popen(cmd, cwd=ROOT, stdout=logs[key], stderr=subprocess.STDOUT)
            for key, cmd in cmds.items()
        }
        rcs: dict[str, int] = {}
        for key, proc in procs.items():
            try:
                rcs[key] = proc.wait(timeout=max(1.0, t0 + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rcs[key] = 124
        seconds = round(time.monotonic() - t0, 1)
        with open(self.log, "a", encoding="utf-8") as f:
            for key, cmd in cmds.items():
                logs[key].seek(0)
                f.write(
                    f"\n=== {name} / {key}: {' '.join(cmd)} (timeout {timeout:.0f} s)\n{logs[key].read()}"
                )
                logs[key].close()
        self.record["parts"][name] = {"rc": rcs, "seconds": seconds}
        print(f"{name}: rc {rcs} in {seconds} s ({self.left():.0f} s left)", flush=True)
        self.save()
        return rcs

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


def calibrate(
    s: Session, stages: dict[str, list[str]], work: Path, args: argparse.Namespace
) -> dict[str, int]:
    """Run every stage's calibration at once (they share the GPU as the stages will) and fit each
    stage's steps to the time left: the seconds per step are measured under that contention."""
    cal_sets = [f"steps={CALIBRATION_STEPS}", "log_every=50", "checkpoint_every=100000"]
    cmds = {
        name: [*cmd, *cal_sets, "--out", str(work / f"{name}-calibration")] for name, cmd in stages.items()
    }
    rcs = s.run_many("calibration", cmds, 150)
    fitted: dict[str, int] = {}
    for name, config in zip(stages, args.train_config, strict=True):
        if rcs[name] != 0:
            continue
        tokens, epoch_steps = step_size(Path(config), [*args.train_set, *cal_sets])
        per_step = seconds_per_step(work / f"{name}-calibration", tokens)
        startup = s.record["parts"]["calibration"]["seconds"] - CALIBRATION_STEPS * per_step
        room = s.left() - args.reserve - max(startup, 0.0)
        cap = min(args.max_train_steps, args.max_train_epochs * epoch_steps)
        steps = int(min(cap, room / (per_step * 1.1)) // 100 * 100)
        s.record.setdefault("stages", {})[name] = {
            "config": config,
            "seconds_per_step": round(per_step, 4),
            "startup_s": round(startup, 1),
            "steps": steps,
            "epochs": round(steps / epoch_steps, 2),
        }
        if steps >= 100:
            fitted[name] = steps
        else:
            print(f"{name}: only {room:.0f} s left, {per_step:.3f} s per step: not started", flush=True)
    s.save()
    return fitted


def half_weights(model_dir: Path) -> None:
    """Store a model folder's float weights as float16: half the bytes to bring back, and loading
    casts them to the model's dtype again (fp16 keeps 3 more mantissa bits than bf16)."""
    from cogview.serialization import load_weights, save_weights

    path = model_dir / "model.safetensors"
    state = load_weights(path)
    save_weights(path, {k: v.half() if v.is_floating_point() else v for k, v in state.items()})


def train_stages(s: Session, args: argparse.Namespace, py: str) -> None:
    """Calibrate, fit the steps to the time left, train every stage at once, and pack the results."""
    from cogview.training.checkpoint import latest_checkpoint

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stages = {
        Path(c).stem: [
            py,
            "-m",
            "cogview",
            "train",
            "--config",
            c,
            "--set",
            f"device={args.device}",
            *args.train_set,
        ]
        for c in args.train_config
    }
    fitted = calibrate(s, stages, work, args)
    if not fitted:
        return
    cmds = {
        name: [*stages[name], f"steps={steps}", "--out", str(work / name)] for name, steps in fitted.items()
    }
    s.run_many("stages", cmds, s.left() - args.reserve + 5)
    packed = work / "stages.tar"
    with tarfile.open(packed, "w") as tar:
        for name in fitted:
            stage = work / name
            if not (stage / "model").is_dir():  # cut off: keep the last checkpoint's weights
                last = latest_checkpoint(stage)
                if last is None:
                    continue
                consolidate = [py, "-m", "cogview", "consolidate", str(last), "--out", str(stage / "model")]
                if s.run(f"{name}_consolidate", consolidate, 60) != 0:
                    continue
            if args.half:
                half_weights(stage / "model")
            for item in ("model", "metrics.jsonl", "train_config.json", "loss.png"):
                if (stage / item).exists():
                    tar.add(stage / item, arcname=f"{name}/{item}")
    split_file(packed, s.out, args.piece_bytes)


def split_file(path: Path, out: Path, piece_bytes: int) -> None:
    """Copy ``path`` into ``out`` as ``NAME.00``, ``NAME.01``, ... of at most ``piece_bytes`` each
    (what comes back from the machine is limited per file); ``cat NAME.* > NAME`` joins them."""
    with open(path, "rb") as f:
        for i, chunk in enumerate(iter(lambda: f.read(piece_bytes), b"")):
            (out / f"{path.name}.{i:02d}").write_bytes(chunk)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="results folder ($OUT on the device machine)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--preset", default="cogview-4b", help="model of the 4B checks (tiny for a rehearsal)")
    p.add_argument("--budget", type=float, default=480, help="seconds for the whole session (default 480)")
    p.add_argument("--reserve", type=float, default=25, help="seconds kept back for packing (default 25)")
    p.add_argument(
        "--train-config",
        nargs="+",
        default=["configs/default-t2i-continue4.json"],
        help="training stages, run at the same time on the one GPU (default: a shapes text-to-image stage)",
    )
    p.add_argument("--train-set", nargs="*", default=[], help="extra KEY=VALUE overrides of every stage")
    p.add_argument(
        "--half", action="store_true", help="bring the trained weights back as float16 (half the bytes)"
    )
    p.add_argument(
        "--piece-bytes",
        type=int,
        default=16_000_000,
        help="stages.tar comes back in pieces of at most this many bytes (default 16 MB, the per-file limit)",
    )
    p.add_argument("--max-train-steps", type=int, default=12000)
    p.add_argument(
        "--max-train-epochs",
        type=float,
        default=3.0,
        help="at most this many passes over the stage's data (default 3: 10 memorised the training images)",
    )
    p.add_argument("--work", default="/tmp/cogview-gpu-session", help="scratch folder of the training runs")
    p.add_argument("--skip", nargs="*", default=[], choices=["engine", "fsdp", "decode", "default", "train"])
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
    if "engine" not in args.skip:
        eng = [
            py,
            "benchmarks/gpu_decode.py",
            "--preset",
            args.preset,
            "--device",
            args.device,
            "--repeats",
            "2",
        ]
        extra = ["--steps", "16", "--batch-sizes", "1", "4"] if tiny else ["--steps", "64"]
        s.run("engine", [*eng, *extra, "--out", str(args.out / "gpu_decode.json")], 180)
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
        train_stages(s, args, py)
    s.record["seconds"] = round(args.budget - s.left(), 1)
    s.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
