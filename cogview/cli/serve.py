"""``cogview serve``: the HTTP API and web page on one model folder (needs the [server] extra)."""

from __future__ import annotations

import argparse
from typing import Any

INSTALL_HINT = (
    "cogview serve needs the [server] extra: pip install 'cogview[server]' (FastAPI, uvicorn, prometheus-client)"
)
EXTRA_MODULES = ("fastapi", "uvicorn", "starlette", "pydantic", "prometheus_client")


def cmd_serve(args: argparse.Namespace) -> int:
    try:  # imported here: the rest of the CLI works without the extra
        from cogview.server.run import serve
    except ImportError as e:
        if (e.name or "").split(".")[0] not in EXTRA_MODULES:
            raise
        raise ValueError(f"{INSTALL_HINT}; missing: {e.name}") from None
    try:
        serve(
            args.model,
            host=args.host,
            port=args.port,
            threads=args.threads,
            device=args.device,
            **scheduler_options(args),
        )
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl+C, then re-raises it: a normal stop
        pass
    return 0


def scheduler_options(args: argparse.Namespace) -> dict[str, Any]:
    """The scheduler flags given; the others keep the scheduler's defaults (one place for them)."""
    given = {
        "max_queue": args.max_queue,
        "max_batch_rows": args.max_batch_rows,
        "deadline": args.deadline,
        "batch_wait": None if args.batch_wait_ms is None else args.batch_wait_ms / 1000,
    }
    return {"batching": args.scheduler == "batch", **{k: v for k, v in given.items() if v is not None}}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a web page and a JSON API for generation, captioning, scoring and upscaling",
        description="Load a model folder once and serve it over HTTP: open http://HOST:PORT/ for a web "
        "page (prompt -> images, image -> caption), or call the JSON API (GET /api/info; POST "
        "/api/generate, /api/caption, /api/score, /api/upscale; images as base64 PNG; progress as "
        "server-sent events from POST /api/generate/stream; GET /api/health, /metrics). A scheduler owns "
        "the model: text-to-image requests waiting when a batch starts are decoded together, up to a row "
        "budget; past --max-queue waiting requests a new one gets 503 with Retry-After. The same prompt, "
        "seed and settings give the same PNG bytes as cogview generate, whatever else is in the batch. Binds 127.0.0.1 (this machine only) unless --host says otherwise; there is "
        "no login, so expose it only on networks you trust. See docs/server.md.",
    )
    p.add_argument("--model", help="model folder (default: the model shipped with cogview)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, local only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--threads", type=int, help="torch CPU threads, set once at start (default: torch's)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument(
        "--scheduler",
        choices=("batch", "lock"),
        default="batch",
        help="batch: decode waiting text-to-image requests together (default); lock: one request at a "
        "time, as earlier versions did (for comparison)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        help="waiting requests past which new ones get 503 with Retry-After (default: 64)",
    )
    p.add_argument(
        "--max-batch-rows",
        type=int,
        help="transformer rows one batch may hold, two per guided image draw; bounds memory (default: 128)",
    )
    p.add_argument(
        "--deadline",
        type=float,
        help="seconds a request may take from arrival to result, else 503 (default: 300)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        help="milliseconds a starting batch waits for requests arriving together with its first "
        "(default: 50; 0: start at once)",
    )
    p.set_defaults(func=cmd_serve)
