"""``cogview serve``: the HTTP API and web page on one model folder (needs the [server] extra)."""

from __future__ import annotations

import argparse

INSTALL_HINT = "cogview serve needs the [server] extra: pip install 'cogview[server]' (FastAPI and uvicorn)"
EXTRA_MODULES = ("fastapi", "uvicorn", "starlette", "pydantic")


def cmd_serve(args: argparse.Namespace) -> int:
    try:  # imported here: the rest of the CLI works without the extra
        from cogview.server.run import serve
    except ImportError as e:
        if (e.name or "").split(".")[0] not in EXTRA_MODULES:
            raise
        raise ValueError(f"{INSTALL_HINT}; missing: {e.name}") from None
    try:
        serve(args.model, host=args.host, port=args.port, threads=args.threads, device=args.device)
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl+C, then re-raises it: a normal stop
        pass
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a web page and a JSON API for generation, captioning, scoring and upscaling",
        description="Load a model folder once and serve it over HTTP: open http://HOST:PORT/ for a web "
        "page (prompt -> images, image -> caption), or call the JSON API (GET /api/info; POST "
        "/api/generate, /api/caption, /api/score, /api/upscale; images as base64 PNG). Requests run one "
        "at a time on the model. The same prompt, seed and settings give the same PNG bytes as "
        "cogview generate. Binds 127.0.0.1 (this machine only) unless --host says otherwise; there is "
        "no login, so expose it only on networks you trust. See docs/server.md.",
    )
    p.add_argument("--model", help="model folder (default: the model shipped with cogview)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, local only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--threads", type=int, help="torch CPU threads, set once at start (default: torch's)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.set_defaults(func=cmd_serve)
