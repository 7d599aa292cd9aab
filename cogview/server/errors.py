"""Every error as ``{"error": message}`` JSON with a 4xx status that says what went wrong.

Bad input must never look like a server fault: schema violations and bodies that are not JSON
(malformed, not UTF-8, nested too deeply) are 422 with one line per field
(naming the fields an endpoint takes when an unknown one is sent), the library's ValueErrors
(empty prompt, unreadable image, settings out of range) are 400, a job the model lacks is 404, a
full queue or a passed deadline is 503 with ``Retry-After``.
Anything else is a real bug: 500 with no internals in the reply (the ASGI server logs the traceback).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from cogview.server.scheduler import Busy
from cogview.server.schemas import REQUESTS
from cogview.server.service import JobUnavailable


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def field_message(error: dict[str, Any], path: str) -> str:
    """One pydantic error as ``field: what to do``."""
    loc = [str(p) for p in error.get("loc", ()) if p != "body"]
    field = ".".join(loc) or "body"
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        allowed = ", ".join(sorted(REQUESTS[path].model_fields)) if path in REQUESTS else "see the docs"
        return f"unknown field {field!r}; {path} takes: {allowed}"
    if kind == "missing":
        if field == "body":
            return "send the fields as a JSON object in the request body (Content-Type: application/json)"
        return f"{field} is required"
    if kind == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', '')}); send a JSON object"
    if kind in ("model_type", "model_attributes_type"):
        return "the body must be a JSON object of fields"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return message if field == "body" else f"{field}: {message}"


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    messages = [field_message(e, request.url.path) for e in exc.errors()]
    return error_response(422, "; ".join(messages), fields=messages)


INTERNAL = "internal server error; the server log has the details"


def status_of(error: BaseException) -> tuple[int, str]:
    """The status and message a job's error is answered with (JSON replies and streamed events)."""
    if isinstance(error, Busy):
        return 503, str(error)
    if isinstance(error, JobUnavailable):
        return 404, str(error)
    if isinstance(error, ValueError):
        return 400, str(error)
    return 500, INTERNAL


async def _job_error(request: Request, exc: Exception) -> JSONResponse:
    status, message = status_of(exc)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Busy) else None
    return error_response(status, message, headers=headers)


BODY_PARSE_ERROR = "There was an error parsing the body"


async def _http(request: Request, exc: HTTPException) -> JSONResponse:
    message = str(exc.detail)
    if exc.status_code == 400 and message == BODY_PARSE_ERROR:
        # FastAPI's answer to a body json cannot decode at all (nesting too deep, bytes that are
        # not UTF-8): the same 422 as any other malformed JSON.
        message = "the body is not valid JSON (not UTF-8, or nested too deeply); send a JSON object of fields"
        return error_response(422, message, fields=[message])
    if exc.status_code == 404:
        message = (
            f"no such page: {request.url.path}; the web page is at / and the API under /api (GET /api/info)"
        )
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "another method")
        message = f"{request.method} is not allowed on {request.url.path}; use {allowed}"
    return error_response(exc.status_code, message, headers=exc.headers)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    return error_response(500, INTERNAL)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    for error in (JobUnavailable, ValueError, Busy):
        app.add_exception_handler(error, _job_error)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _internal)
