"""Generation time when another program shares the CPU: OpenMP's wait policy, measured.

Torch's CPU kernels run on an OpenMP pool with one thread per core. A thread that finishes its
share waits at the barrier for the others: GNU OpenMP spins a while (``GOMP_SPINCOUNT``, 300,000
by default, far more with ``OMP_WAIT_POLICY=ACTIVE``), then sleeps; ``PASSIVE`` sleeps at once.
When another program holds a core, the thread on that core is descheduled and the others spin
at every one of the thousands of small parallel regions of a decode step. This script times the
same ``cogview generate`` command (one process per run: the settings are read when torch loads
OpenMP) with each setting, on an idle CPU, beside a busy Python loop and beside a one-thread torch
job (a matrix product in a loop, as a training run on one core is), alternating the settings.

    python benchmarks/thread_contention.py [--repeats 3] [--images 4]

Prints a table and writes benchmarks/results/thread_contention.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "thread_contention.json"
# Environment settings compared; None removes the variable. GNU OpenMP's own default is 300,000
# spins (written out, since importing cogview sets 10,000 when neither variable is set).
POLICIES: dict[str, dict[str, str | None]] = {
    "OpenMP default": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "300000"},
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None},
    "cogview (10,000)": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None},
}
LOADS = {
    "idle": None,
    "busy Python loop": "while True: pass",
    "torch job, 1 thread": "import torch\ntorch.set_num_threads(1)\na = torch.randn(384, 384)\nwhile True: a @ a",
}


def generate_seconds(settings: dict[str, str | None], images: int) -> float:
    """Wall seconds of one ``cogview generate`` process with ``settings`` (import and load included)."""
    env = dict(os.environ)
    for key, value in settings.items():
        env.pop(key, None)
        if value is not None:
            env[key] = value
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "cogview",
            "generate",
            "披萨",
            "cat face",
            "-n",
            str(images),
            "--seed",
            "0",
        ]
        t0 = time.perf_counter()
        subprocess.run([*cmd, "--out", out], env=env, check=True, capture_output=True)
        return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="runs of each setting, alternated (median)")
    p.add_argument("--images", type=int, default=4, help="images per prompt (two prompts)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    rows = []
    for load, code in LOADS.items():
        hog = None if code is None else subprocess.Popen([sys.executable, "-c", code])
        try:
            times: dict[str, list[float]] = {name: [] for name in POLICIES}
            for _ in range(args.repeats):
                for name, policy in POLICIES.items():
                    times[name].append(generate_seconds(policy, args.images))
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        for name, ts in times.items():
            rows.append({"load": load, "policy": name, "median_s": statistics.median(ts), "seconds": ts})
            print(f"{load:>20} | {name:>16} | {statistics.median(ts):7.2f} s", flush=True)
    print(f"\n{'load':>20} | {'setting':>16} | median s | speed vs default")
    for r in rows:
        base = next(x for x in rows if x["load"] == r["load"] and x["policy"] == "OpenMP default")
        print(
            f"{r['load']:>20} | {r['policy']:>16} | {r['median_s']:8.2f} | {base['median_s'] / r['median_s']:5.2f}x"
        )
    record = {
        "command": "python benchmarks/thread_contention.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "images": 2 * args.images,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
