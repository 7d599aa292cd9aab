"""``create_app(pipeline)``: the FastAPI app of ``cogview serve`` (JSON API, progress stream, page, metrics).

Endpoints are thin: the body is validated by :mod:`cogview.server.schemas`, checked and turned into
work by :class:`~cogview.server.service.Service` (in the threadpool when it decodes images), and
queued on the app's :class:`~cogview.server.scheduler.Scheduler`, which owns the model; the
endpoint then awaits the result (:mod:`cogview.server.streams`) without blocking the event loop.
All state lives in the app built here; two apps never share anything.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from cogview import __version__
from cogview.pipeline import CogViewPipeline
from cogview.server import schemas, streams
from cogview.server.body_limit import DEFAULT_MAX_BODY_BYTES, BodyLimit
from cogview.server.errors import install_error_handlers
from cogview.server.metrics import CONTENT_TYPE_LATEST, CountRequests, Metrics
from cogview.server.scheduler import Scheduler
from cogview.server.service import Service

# The status a reply to a client that already went away is logged with (nginx's "client closed").
CLIENT_CLOSED = 499


def page_html() -> str:
    """The web page (``cogview/server/static/index.html``: plain HTML and JS, no build step)."""
    return importlib.resources.files("cogview.server").joinpath("static", "index.html").read_text("utf-8")


def create_app(
    pipeline: CogViewPipeline,
    *,
    model_name: str = "",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    **scheduler_options: Any,
) -> FastAPI:
    """An app serving ``pipeline``'s jobs; ``model_name`` is only reported by ``/api/info``.

    Request bodies over ``max_body_bytes`` are refused with 413 before they are read.
    ``scheduler_options`` go to :class:`~cogview.server.scheduler.Scheduler` (``batching``,
    ``max_queue``, ``max_batch_rows``, ``deadline``, ``batch_wait``, ``preview_rows``); its worker
    thread starts here and stops when the app shuts down (``app.state.scheduler.close()``).
    """
    service = Service(pipeline, model_name)
    metrics = Metrics()
    scheduler = Scheduler(pipeline, metrics=metrics, **scheduler_options)
    page = page_html()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(scheduler.close)

    # No /docs or /redoc: they load their scripts from a CDN. The schema stays at /openapi.json.
    app = FastAPI(title="CogView", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.scheduler = scheduler
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    paths: set[str] = set()  # the app's routes, filled in below: other paths are counted as "other"
    app.add_middleware(CountRequests, metrics=metrics, endpoints=lambda: paths)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        """The jobs the model serves, its sampling defaults, vocabulary sizes, device and limits."""
        return service.info()

    @app.get("/api/health")
    async def health() -> JSONResponse:
        """Whether the scheduler's worker runs (200) or not (503), the queue depth and the row budget."""
        status = scheduler.status()
        return JSONResponse(status, status_code=200 if scheduler.alive else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def run(request: Request, job: str, make: Callable[[], Any]) -> Any:
        """Check the request in the threadpool, queue its work, await its result."""
        work = await run_in_threadpool(make)
        ticket = scheduler.submit(work, job)
        try:
            return await streams.result(scheduler, ticket, request)
        except streams.ClientGone:
            return Response(status_code=CLIENT_CLOSED)

    @app.post("/api/generate")
    async def generate(req: schemas.GenerateRequest, request: Request) -> Any:
        """Images for one prompt with the exact settings and seeds used (as ``generate.json``)."""
        result = await run(request, "generate", lambda: service.image_work(req))
        return result if isinstance(result, Response) else service.generate_reply(result)

    @app.post("/api/generate/stream")
    async def generate_stream(req: schemas.GenerateRequest, request: Request) -> StreamingResponse:
        """Server-sent events: ``queued``, ``progress``, ``preview`` (partial images), then ``result``
        (the reply of ``/api/generate``) or ``error`` (``{"status", "error"}``)."""
        work = await run_in_threadpool(service.image_work, req, True)
        ticket = scheduler.submit(work, "generate")
        events = streams.event_stream(scheduler, ticket, request, service.generate_reply)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    @app.post("/api/caption")
    async def caption(req: schemas.CaptionRequest, request: Request) -> Any:
        """Captions of one image in Chinese (zh) or English (en); greedy unless top_k > 1."""
        return await run(request, "caption", lambda: service.caption(req))

    @app.post("/api/score")
    async def score(req: schemas.ScoreRequest, request: Request) -> Any:
        """Caption likelihood of each prompt for each image (CogView's reranking score)."""
        return await run(request, "score", lambda: service.score(req))

    @app.post("/api/upscale")
    async def upscale(req: schemas.UpscaleRequest, request: Request) -> Any:
        """The image at twice its size, by super-resolution in token space."""
        return await run(request, "upscale", lambda: service.upscale(req))

    @app.post("/api/edit")
    async def edit(req: schemas.EditRequest, request: Request) -> Any:
        """One image edited in token space from a prompt: one region (mask, box, rows, prefix,
        shift, pad or strength) says which codes are sampled; the others are kept."""
        return await run(request, "edit", lambda: service.edit(req))

    paths.update(route.path for route in app.routes if hasattr(route, "path"))
    return app
