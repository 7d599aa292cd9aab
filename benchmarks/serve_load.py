"""Load on `cogview serve`: the batching scheduler against the one-lock server, many clients at once.

For each server (``--scheduler batch`` and ``--scheduler lock``, each a `cogview serve` subprocess
on a free loopback port with the shipped model) and each number of concurrent clients (1, 8, 16,
32 by default), every client asks for one image (POST /api/generate, the model's default settings,
its own prompt and seed) again and again until the level has sent ``rounds x clients`` requests.
Reported per level: throughput (images/s over the level's wall time), p50 and p99 latency, the
count of 5xx replies and the server's peak resident memory (sampled from /proc while the level
runs). An offline reference decodes the batches the batched server forms for each level in this
process (right after the servers' runs of that level), without server or queue: the bound any
scheduler of this decoding engine could reach, so the server's share of it says how close
batching at batch starts comes. Both servers run on the same machine with the same torch threads, each level on one
server right after the other (only one is busy at a time), so both see the same drifting load of
a shared CPU: only their ratio is meaningful there. Loopback only; bounded by ``--rounds``,
``--lock-rounds`` and ``--max-seconds`` per level.

Run: .venv/bin/python benchmarks/serve_load.py [--clients 1 8 16 32] [--threads N]
     [--rounds 2] [--lock-rounds 1] [--out benchmarks/results/serve_load.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch

PROMPTS = ["a red circle on the left", "手写数字7", "a blue square on a white background", "一个绿色三角形"]
HOST = "127.0.0.1"  # loopback only: this benchmark never reaches another machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of ``pid`` in MB from /proc (``VmHWM``: its peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(url: str, body: dict, timeout: float) -> tuple[int, float]:
    """(status, seconds) of one request; a refused connection or a timeout counts as 599."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            reply.read()
            status = reply.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError:
        status = 599
    return status, time.perf_counter() - start


class Server:
    """`cogview serve` in a subprocess on a free loopback port."""

    def __init__(self, scheduler: str, threads: int, extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        args = ["serve", "--host", HOST, "--port", str(self.port), "--threads", str(threads)]
        args += ["--scheduler", scheduler, "--deadline", "3600", "--max-queue", "1024", *extra]
        self.log = tempfile.TemporaryFile()  # not a pipe: a full pipe would stall the server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cogview", *args], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"cogview serve exited: {self.log.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/api/health", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("cogview serve did not start within 300 s") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def run_level(server: Server, clients: int, requests: int, max_seconds: float, body: dict) -> dict[str, Any]:
    """``requests`` generate calls from ``clients`` threads in a closed loop; throughput and latencies."""
    lock = threading.Lock()
    sent = [0]
    results: list[tuple[int, float]] = []
    peak = [rss_mb(server.proc.pid)]
    stop = threading.Event()
    start = time.perf_counter()

    def client(index: int) -> None:
        while True:
            with lock:
                if sent[0] >= requests or time.perf_counter() - start > max_seconds:
                    return
                n = sent[0]
                sent[0] += 1
            request = {**body, "prompt": PROMPTS[n % len(PROMPTS)], "seed": n}
            results.append(post(server.url + "/api/generate", request, timeout=max_seconds + 600))

    def sample_memory() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], rss_mb(server.proc.pid))

    monitor = threading.Thread(target=sample_memory, daemon=True)
    monitor.start()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    stop.set()
    monitor.join()
    ok = sorted(s for status, s in results if status == 200)
    q = statistics.quantiles(ok, n=100, method="inclusive") if len(ok) > 1 else ok * 99
    return {
        "clients": clients,
        "requests": len(results),
        "ok": len(ok),
        "errors_5xx": sum(1 for status, _ in results if status >= 500),
        "errors_other": sum(1 for status, _ in results if status != 200 and status < 500),
        "wall_s": round(wall, 2),
        "images_per_s": round(len(ok) / wall, 4),
        "p50_s": round(q[49], 2) if ok else None,
        "p99_s": round(q[98], 2) if ok else None,
        "peak_rss_mb": round(peak[0], 1),
    }


class Offline:
    """The batches the batched server forms for a level, decoded in this process with no server,
    queue or HTTP: the bound any scheduler of this decoding engine could reach at that batch size.
    The server's share of it says how close batching at batch starts comes to that bound."""

    def __init__(self, threads: int, candidates: int | None) -> None:
        from cogview.pipeline import CogViewPipeline

        torch.set_num_threads(threads)
        self.pipe = CogViewPipeline.from_pretrained()
        self.candidates = self.pipe.candidates if candidates is None else candidates

    def run(self, clients: int) -> dict[str, float]:
        from cogview.server.batch import ImageWork, decode_parts, finish
        from cogview.server.scheduler import DEFAULT_MAX_BATCH_ROWS

        t2i = self.pipe.text_to_image
        works = []
        for n in range(clients):
            prompt = PROMPTS[n % len(PROMPTS)]
            tokens, settings = t2i.prompt_tokens(prompt)[0], t2i.settings_for(prompt)
            works.append(ImageWork(prompt, tokens, settings, n, 1, self.candidates))
        per_batch = max(1, DEFAULT_MAX_BATCH_ROWS // (works[0].draws * works[0].rows_per_draw))
        start = time.perf_counter()
        for i in range(0, clients, per_batch):
            group = works[i : i + per_batch]
            codes = decode_parts(t2i, [w.part() for w in group], group[0].settings)
            for work, c in zip(group, codes, strict=True):
                finish(self.pipe, work, c)
        seconds = time.perf_counter() - start
        return {"seconds": round(seconds, 2), "images_per_s": round(clients / seconds, 4)}


def bench(
    args: argparse.Namespace, body: dict
) -> tuple[dict[str, dict[str, Any]], dict[int, dict[str, float]]]:
    """Every level on each server and offline, back to back (the load of a shared machine drifts;
    interleaving lets all three see the same); only one of them is busy at a time."""
    servers = {name: Server(name, args.threads, args.serve_args) for name in args.schedulers}
    offline = None if args.no_offline else Offline(args.threads, body.get("candidates"))
    runs: dict[str, dict[str, Any]] = {
        name: {
            "scheduler": name,
            "rounds": args.rounds if name == "batch" else args.lock_rounds,
            "levels": [],
        }
        for name in servers
    }
    reference: dict[int, dict[str, float]] = {}
    try:
        for server in servers.values():  # warm-up: the first request pays one-off costs
            post(server.url + "/api/generate", {**body, "prompt": PROMPTS[0], "seed": 0}, timeout=600)
        if offline is not None:
            offline.run(1)
        for clients in args.clients:
            for name, server in servers.items():
                level = run_level(server, clients, runs[name]["rounds"] * clients, args.max_seconds, body)
                print(f"  {name:7s} {clients:3d} clients: {level}", flush=True)
                runs[name]["levels"].append(level)
            if offline is not None:
                reference[clients] = offline.run(clients)
                print(f"  offline {clients:3d} requests: {reference[clients]}", flush=True)
        for name, server in servers.items():
            runs[name]["peak_rss_mb_overall"] = round(rss_mb(server.proc.pid, "VmHWM"), 1)
    finally:
        for server in servers.values():
            server.stop()
    return runs, reference


def table(runs: dict[str, dict[str, Any]], clients: list[int], offline: dict[int, dict[str, float]]) -> str:
    head = "| clients | server | images/s | p50 s | p99 s | 5xx | peak RSS MB | batched / lock | of offline |"
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    by = {(name, lv["clients"]): lv for name, run in runs.items() for lv in run["levels"]}
    for c in clients:
        lock = by.get(("lock", c))
        for name in runs:
            lv = by[(name, c)]
            ratio = share = ""
            if name == "batch" and lock and lock["images_per_s"]:
                ratio = f"{lv['images_per_s'] / lock['images_per_s']:.2f}x"
            if name == "batch" and c in offline:
                share = f"{lv['images_per_s'] / offline[c]['images_per_s']:.0%}"
            lines.append(
                f"| {c} | {name} | {lv['images_per_s']:.3f} | {lv['p50_s']} | {lv['p99_s']} | "
                f"{lv['errors_5xx']} | {lv['peak_rss_mb']:.0f} | {ratio} | {share} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Writes a table to stdout and the numbers to --out."
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 16, 32], help="concurrency levels")
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads of each server (default: torch's, as `cogview serve` without --threads: "
        f"{torch.get_num_threads()} here)",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="requests per client and level, batched server (default: 2)"
    )
    parser.add_argument(
        "--lock-rounds",
        type=int,
        default=1,
        help="requests per client and level, one-lock server (default: 1)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=300,
        help="no new requests after this long in one level (default: 300)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="candidates per image (default: the model's, 2 for the shipped one)",
    )
    parser.add_argument(
        "--schedulers", nargs="+", default=["lock", "batch"], choices=["lock", "batch"], help="servers to run"
    )
    parser.add_argument(
        "--serve-args", nargs=argparse.REMAINDER, default=[], help="further `cogview serve` flags (last)"
    )
    parser.add_argument(
        "--no-offline",
        action="store_true",
        help="skip the offline reference (the same batches without a server)",
    )
    parser.add_argument("--out", default="benchmarks/results/serve_load.json", help="JSON results file")
    args = parser.parse_args()
    if min(args.clients) < 1 or args.rounds < 1 or args.lock_rounds < 1 or args.threads < 1:
        parser.error("--clients, --rounds, --lock-rounds and --threads must be positive")
    body: dict[str, Any] = {"num_images": 1}
    if args.candidates is not None:
        body["candidates"] = args.candidates
    started = time.time()
    load_before = os.getloadavg()
    runs, offline = bench(args, body)
    print(table(runs, args.clients, offline))
    out = {
        "command": "python " + " ".join(sys.argv),
        "model": "shipped default model",
        "request": {**body, "prompts": PROMPTS, "seed": "the request's index in its level"},
        "threads": args.threads,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "seconds": round(time.time() - started, 1),
        "runs": runs,
        "offline_batches": offline,
    }
    if "batch" in runs and "lock" in runs:
        lock = {lv["clients"]: lv["images_per_s"] for lv in runs["lock"]["levels"]}
        out["throughput_ratio_batch_over_lock"] = {
            lv["clients"]: round(lv["images_per_s"] / lock[lv["clients"]], 2)
            for lv in runs["batch"]["levels"]
            if lock.get(lv["clients"])
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
