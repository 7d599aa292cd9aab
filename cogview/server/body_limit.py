"""A cap on request bodies, enforced before the body is read: 413 instead of buffering it.

Starlette reads a whole body into memory before validation, so without a cap a 300 MB upload
costs the server its size (and more) however small the request it pretends to be. The cap is
checked against ``Content-Length`` at once and, for chunked uploads, while the bytes arrive.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The largest body a valid request needs: 16 images of a few MB each as base64 stay far below it.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


class BodyLimit:
    """ASGI middleware answering 413 to any HTTP request whose body exceeds ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await self._reply(send, 400, "Content-Length is not a number")
                return
            if declared > self.max_bytes:
                await self._reply(send, 413, self._message())
                return
        if length is None:  # chunked: read it here, up to the cap, and hand the app the bytes
            chunks, seen = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunks.append(message.get("body", b""))
                seen += len(chunks[-1])
                if seen > self.max_bytes:
                    await self._reply(send, 413, self._message())
                    return
                if not message.get("more_body", False):
                    break
            receive = _replay(b"".join(chunks), receive)
        await self.app(scope, receive, send)

    def _message(self) -> str:
        return (
            f"the request body is larger than {self.max_bytes} bytes; send smaller or fewer images "
            "(the API takes PNG or JPEG as base64, a few MB each)"
        )

    @staticmethod
    async def _reply(send: Send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # after the body: wait for the disconnect as usual
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


__all__ = ["DEFAULT_MAX_BODY_BYTES", "BodyLimit"]
