"""A request's side of the scheduler: its events, raced against the client's disconnect and its deadline.

:func:`result` waits for the final result (the JSON endpoints); :func:`event_stream` turns the
events into server-sent events (``POST /api/generate/stream``). Either way a client that goes
away, or a request that outlives its deadline, is cancelled in the scheduler at once, so a
waiting request never takes rows in a batch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request

from cogview.server.errors import status_of
from cogview.server.scheduler import Busy, Scheduler, Ticket, deadline_message

FINAL = ("result", "error")


class ClientGone(Exception):
    """The client closed the connection before its result."""


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Waiter:
    """The events of ``ticket`` for one HTTP request; :meth:`close` cancels what is left of it."""

    def __init__(self, scheduler: Scheduler, ticket: Ticket, request: Request) -> None:
        self.scheduler, self.ticket = scheduler, ticket
        self._gone = asyncio.ensure_future(_until_disconnect(request))

    async def next(self) -> tuple[str, Any]:
        """The next event; raises :class:`ClientGone` or :class:`Busy` (deadline) instead."""
        get = asyncio.ensure_future(self.ticket.events.get())
        done, _ = await asyncio.wait(
            {get, self._gone}, timeout=self.ticket.time_left(), return_when=asyncio.FIRST_COMPLETED
        )
        if get in done:
            return get.result()
        get.cancel()
        if self._gone in done:
            self.scheduler.cancel(self.ticket, "disconnect")
            raise ClientGone
        self.scheduler.cancel(self.ticket, "deadline")
        raise Busy(deadline_message(self.scheduler.deadline), self.scheduler.retry_after())

    def close(self) -> None:
        self._gone.cancel()
        self.scheduler.cancel(self.ticket, "disconnect")  # nothing happens to a finished ticket


async def result(scheduler: Scheduler, ticket: Ticket, request: Request) -> Any:
    """The job's result; its error is raised (the app's handlers turn it into a reply)."""
    waiter = Waiter(scheduler, ticket, request)
    try:
        while True:
            kind, data = await waiter.next()
            if kind == "result":
                return data
            if kind == "error":
                raise data
    finally:
        waiter.close()


def sse(kind: str, data: Any) -> str:
    """One server-sent event: ``event: kind`` and one line of JSON."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def event_stream(
    scheduler: Scheduler, ticket: Ticket, request: Request, payload: Callable[[Any], Any]
) -> AsyncIterator[str]:
    """``queued``, ``progress``, ``preview`` events, then ``result`` (``payload`` of the result) or ``error``."""
    waiter = Waiter(scheduler, ticket, request)
    try:
        while True:
            try:
                kind, data = await waiter.next()
            except ClientGone:
                return
            except Busy as e:
                kind, data = "error", e
            if kind == "result":
                data = payload(data)
            elif kind == "error":
                status, message = status_of(data)
                data = {"status": status, "error": message}
            yield sse(kind, data)
            if kind in FINAL:
                return
    finally:
        waiter.close()


__all__ = ["ClientGone", "Waiter", "event_stream", "result", "sse"]
