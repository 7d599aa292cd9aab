"""``create_app(pipeline)``: the FastAPI app of ``cogview serve`` (JSON API + one web page).

Endpoints are thin: the body is validated by :mod:`cogview.server.schemas`, the work is one
:class:`~cogview.server.service.Service` method, run in the threadpool so that a generation never
blocks the event loop (the page and ``/api/info`` stay responsive while a request waits for the
model's lock). All state lives in the app built here; two apps never share anything.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from cogview import __version__
from cogview.pipeline import CogViewPipeline
from cogview.server.body_limit import DEFAULT_MAX_BODY_BYTES, BodyLimit
from cogview.server.errors import install_error_handlers
from cogview.server.service import Service


def page_html() -> str:
    """The web page (``cogview/server/static/index.html``: plain HTML and JS, no build step)."""
    return importlib.resources.files("cogview.server").joinpath("static", "index.html").read_text("utf-8")


def create_app(
    pipeline: CogViewPipeline, *, model_name: str = "", max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> FastAPI:
    """An app serving ``pipeline``'s jobs; ``model_name`` is only reported by ``/api/info``.

    Request bodies over ``max_body_bytes`` are refused with 413 before they are read.
    """
    service = Service(pipeline, model_name)
    page = page_html()
    # No /docs or /redoc: they load their scripts from a CDN. The schema stays at /openapi.json.
    app = FastAPI(title="CogView", version=__version__, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        """The jobs the model serves, its sampling defaults, vocabulary sizes, device and limits."""
        return service.info()

    # Service methods are plain functions: FastAPI runs them in its threadpool, off the event loop,
    # and validates each body against the method's annotated request model.
    for path, run in (
        ("/api/generate", service.generate),
        ("/api/caption", service.caption),
        ("/api/score", service.score),
        ("/api/upscale", service.upscale),
    ):
        app.post(path)(run)
    return app
