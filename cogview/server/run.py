"""``serve``: load a model folder once, set torch's threads once, and run the app with uvicorn.

Logging is left to the caller (``cogview serve`` configures it); uvicorn's own loggers propagate
to it instead of installing a second configuration.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from typing import Any

import torch
import uvicorn

from cogview.checks import positive_int
from cogview.pipeline import CogViewPipeline
from cogview.server.app import create_app

logger = logging.getLogger(__name__)

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    model: str | os.PathLike | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    threads: int | None = None,
    device: str | None = None,
    **scheduler_options: Any,
) -> None:
    """Serve ``model`` (None: the shipped default) at ``http://host:port/`` until interrupted.

    ``scheduler_options`` go to :class:`~cogview.server.scheduler.Scheduler` (e.g. ``batching=False``
    for one request at a time, ``max_queue``, ``deadline``).
    """
    if threads is not None:
        # once, before any request: worker threads inherit it
        torch.set_num_threads(positive_int("threads", threads))
    if not 0 <= port <= 65535:
        raise ValueError(f"port must lie in [0, 65535], got {port}")
    pipeline = CogViewPipeline.from_pretrained(model, device=device)
    app = create_app(pipeline, model_name=str(model) if model is not None else "default", **scheduler_options)
    if not is_loopback(host):
        logger.warning("serving on %s: anyone who can reach this address can use the model (no login)", host)
    logger.info(
        "serving %s (%s) with %d torch threads, %s scheduler: open http://%s:%d/",
        model or "the default model",
        ", ".join(pipeline.jobs),
        torch.get_num_threads(),
        app.state.scheduler.status()["scheduler"],
        host,
        port,
    )
    uvicorn.run(app, host=host, port=port, log_config=None)
