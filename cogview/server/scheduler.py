"""The scheduler that owns the model: a bounded queue, one worker thread, batches of requests.

Every job goes through one worker thread, so the model is never used by two threads at once.
Text-to-image requests waiting when a batch starts are decoded together
(:mod:`cogview.server.batch`), up to a budget of transformer rows, grouped by sampling settings
(the logits processors take one setting per call); a request larger than the budget is split
over several batches. This is the simpler design issue 19 allows: a request joins at a batch
start, not between decode steps. Every image request decodes the same number of codes, so a
newcomer waits at most one batch, and a short gathering window (``batch_wait``) lets requests
that arrive together start together. Captioning, scoring and upscaling run alone between batches.

Past ``max_queue`` waiting requests a new one is refused at once (:class:`Busy`, a 503). A request
that is cancelled (its client went away) or outlives its deadline leaves the queue before its
batch starts; once decoding, its rows leave the batch at the next step (the engine drops them
from the cache), and when every request of the batch is gone the batch stops there. ``batching=False`` runs one
request per batch: the one-lock server of earlier versions, kept for comparison.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from cogview.generation.sampling import SamplingConfig
from cogview.images import to_pil
from cogview.pipeline import CogViewPipeline
from cogview.server.batch import ImageWork, Part, decode_parts, finish_all, preview_pixels
from cogview.server.codec import encode_images
from cogview.server.metrics import Metrics

logger = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 64
DEFAULT_MAX_BATCH_ROWS = 128  # 32 guided draws: about 100 MB of KV cache with the shipped model
DEFAULT_DEADLINE = 300.0  # seconds from arrival to result
DEFAULT_BATCH_WAIT = 0.05  # seconds a starting batch waits for requests that arrive with the first
DEFAULT_PREVIEW_ROWS = 2  # code rows between two previews of a streamed request


def deadline_message(deadline: float) -> str:
    return f"no result within the server's deadline of {deadline:g} s: the server is busy, retry later"


class Busy(RuntimeError):
    """The server cannot take the request now (full queue, deadline passed): 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(eq=False)
class Ticket:
    """A request in the scheduler. The worker thread hands its events to the request's event loop.

    Events are ``(kind, data)``: ``queued`` (requests ahead), ``progress`` (codes decoded and in
    all), ``preview`` (partial images), then ``result`` (the job's output) or ``error`` (an exception).
    """

    work: ImageWork | Callable[[], Any]
    job: str
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic() after which the request is given up
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    finished: bool = False
    next_draw: int = 0  # draws handed to batches
    codes: list[torch.Tensor] = field(default_factory=list)  # [n, h, w] per finished part
    done_draws: int = 0

    def emit(self, kind: str, data: Any) -> None:
        """Queue an event for the request (from any thread); a closed loop means nobody listens."""
        if kind in ("result", "error"):
            self.finished = True
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, data))
        except RuntimeError:
            pass

    def time_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    @property
    def live(self) -> bool:
        return not (self.cancelled or self.finished) and time.monotonic() < self.deadline

    @property
    def key(self) -> SamplingConfig | None:
        """Requests batch together when their keys are equal (None: a job that runs alone)."""
        return self.work.settings if isinstance(self.work, ImageWork) else None


@dataclass(frozen=True)
class Piece:
    """Draws ``[start, stop)`` of one request's image work, in a batch."""

    ticket: Ticket
    start: int
    stop: int

    @property
    def work(self) -> ImageWork:
        assert isinstance(self.ticket.work, ImageWork)
        return self.ticket.work

    @property
    def part(self) -> Part:
        return self.work.part(self.start, self.stop)


class Scheduler:
    """Run requests on ``pipeline`` in one worker thread; ``batching=False`` runs one at a time.

    Args:
        max_queue: waiting requests past which a new one is refused (503).
        max_batch_rows: transformer rows a batch may hold (memory bound; two per guided draw).
        deadline: seconds a request may take from arrival to result.
        batch_wait: seconds a batch waits for more requests before it starts (not when full).
        preview_rows: code rows between previews of streamed requests.
    """

    def __init__(
        self,
        pipeline: CogViewPipeline,
        *,
        batching: bool = True,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
        deadline: float = DEFAULT_DEADLINE,
        batch_wait: float = DEFAULT_BATCH_WAIT,
        preview_rows: int = DEFAULT_PREVIEW_ROWS,
        metrics: Metrics | None = None,
    ) -> None:
        if max_queue < 1 or max_batch_rows < 2 or deadline <= 0 or batch_wait < 0 or preview_rows < 1:
            raise ValueError(
                "need max_queue >= 1, max_batch_rows >= 2 (a guided draw takes two rows), deadline > 0, "
                f"batch_wait >= 0 and preview_rows >= 1; got {max_queue}, {max_batch_rows}, {deadline}, "
                f"{batch_wait}, {preview_rows}"
            )
        self.pipeline = pipeline
        self.batching = batching
        self.max_queue, self.max_batch_rows = max_queue, max_batch_rows
        self.deadline, self.batch_wait, self.preview_rows = deadline, batch_wait, preview_rows
        self.metrics = metrics or Metrics()
        self.metrics.watch(lambda: len(self._pending), lambda: self._running_rows)
        self._pending: deque[Ticket] = deque()
        self._running_rows = 0
        self._batch_seconds = 1.0  # running mean, for Retry-After
        self._cond = threading.Condition()
        self._closed = False
        self._threads = torch.get_num_threads()  # a new thread would start with torch's default
        self._worker = threading.Thread(target=self._loop, name="cogview-scheduler", daemon=True)
        self._worker.start()

    # --- the event loop's side ----------------------------------------------------------------

    def submit(self, work: ImageWork | Callable[[], Any], job: str) -> Ticket:
        """Queue ``work`` (from the event loop's thread); raises :class:`Busy` if the queue is full."""
        ticket = Ticket(work, job, asyncio.get_running_loop(), time.monotonic() + self.deadline)
        with self._cond:
            if self._closed:
                raise Busy("the server is shutting down; try again shortly", 5)
            if len(self._pending) >= self.max_queue:
                self.metrics.rejected.labels("queue_full").inc()
                raise Busy(
                    f"the server is busy: {len(self._pending)} requests are waiting (at most "
                    f"{self.max_queue}); retry after the time in the Retry-After header",
                    self.retry_after(),
                )
            ticket.emit("queued", {"position": len(self._pending)})
            self._pending.append(ticket)
            self._cond.notify_all()
        return ticket

    def cancel(self, ticket: Ticket, reason: str = "disconnect") -> None:
        """Give up ``ticket``: it leaves the queue now, or its batch stops if nobody else is in it."""
        with self._cond:
            if ticket.cancelled or ticket.finished:
                return
            ticket.cancelled = True
            self.metrics.rejected.labels(reason).inc()
            if ticket in self._pending:
                self._pending.remove(ticket)
                self._announce_positions()
            self._cond.notify_all()

    def retry_after(self) -> int:
        """Seconds until a refused client should try again: the batches ahead of it, at least 1."""
        batches = 1 + len(self._pending) // max(1, self.max_batch_rows // 4)
        return max(1, math.ceil(batches * self._batch_seconds))

    def status(self) -> dict[str, Any]:
        return {
            "status": "ok" if self._worker.is_alive() else "stopped",
            "scheduler": "batch" if self.batching else "lock",
            "queue_depth": len(self._pending),
            "max_queue": self.max_queue,
            "running_rows": self._running_rows,
            "max_batch_rows": self.max_batch_rows,
            "deadline_s": self.deadline,
        }

    @property
    def alive(self) -> bool:
        return self._worker.is_alive()

    def close(self) -> None:
        """Stop the worker after its current batch; waiting requests get 503."""
        with self._cond:
            self._closed = True
            for ticket in self._pending:
                ticket.emit("error", Busy("the server is shutting down", 5))
            self._pending.clear()
            self._cond.notify_all()
        self._worker.join(timeout=60)

    # --- the worker's side ---------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_num_threads(self._threads)
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if isinstance(batch, Ticket):
                self._run_call(batch)
            else:
                self._run_images(batch)

    def _drop_dead(self) -> None:
        """Waiting requests past their deadline get a 503 and leave before taking rows."""
        for ticket in [t for t in self._pending if not t.live]:
            self._pending.remove(ticket)
            if not ticket.cancelled:
                self.metrics.rejected.labels("deadline").inc()
                ticket.emit("error", Busy(deadline_message(self.deadline), self.retry_after()))

    def _waiting_rows(self, key: SamplingConfig) -> int:
        return sum(
            (t.work.draws - t.next_draw) * t.work.rows_per_draw
            for t in self._pending
            if isinstance(t.work, ImageWork) and t.key == key
        )

    def _next_batch(self) -> Ticket | list[Piece] | None:
        with self._cond:
            gathered = False
            while True:
                self._drop_dead()
                if self._closed:
                    return None
                if not self._pending:
                    self._cond.wait()
                    continue
                head = self._pending[0]
                if head.key is None:
                    self._pending.popleft()
                    self._announce_positions()
                    return head
                if self.batching and not gathered and self.batch_wait > 0:
                    end = time.monotonic() + self.batch_wait
                    while self._waiting_rows(head.key) < self.max_batch_rows and time.monotonic() < end:
                        self._cond.wait(end - time.monotonic())
                    gathered = True
                    continue  # the queue may have changed: look again
                pieces = self._take(head.key)
                self._announce_positions()
                return pieces

    def _take(self, key: SamplingConfig) -> list[Piece]:
        """Draws of the waiting requests with settings ``key``, oldest first, up to the row budget."""
        pieces, used = [], 0
        for ticket in list(self._pending):
            work = ticket.work
            if not isinstance(work, ImageWork) or ticket.key != key:
                continue
            n = min((self.max_batch_rows - used) // work.rows_per_draw, work.draws - ticket.next_draw)
            if n <= 0:
                break
            pieces.append(Piece(ticket, ticket.next_draw, ticket.next_draw + n))
            ticket.next_draw += n
            used += n * work.rows_per_draw
            if ticket.next_draw == work.draws:
                self._pending.remove(ticket)
            if not self.batching:
                break
        self._running_rows = used
        return pieces

    def _announce_positions(self) -> None:
        for position, ticket in enumerate(self._pending):
            ticket.emit("queued", {"position": position})

    def _run_call(self, ticket: Ticket) -> None:
        start = time.perf_counter()
        try:
            result = ticket.work()  # type: ignore[operator]
        except Exception as e:  # reported to its client; the worker keeps serving
            ticket.emit("error", e)
            return
        self._finished(ticket, result, time.perf_counter() - start)

    def _finished(self, ticket: Ticket, result: Any, seconds: float) -> None:
        if ticket.live:
            self.metrics.latency.labels(ticket.job).observe(time.monotonic() - ticket.submitted)
            ticket.emit("result", result)
        logger.info("%s done in %.2f s", ticket.job, seconds)

    def _run_images(self, pieces: list[Piece]) -> None:
        t2i = self.pipeline.text_to_image
        assert t2i is not None
        settings = pieces[0].work.settings
        parts = [p.part for p in pieces]
        offsets = [0]
        for p in pieces:
            offsets.append(offsets[-1] + p.stop - p.start)
        steps, g = t2i.num_tokens, t2i.image_tokenizer.grid_size

        decoded = [0]  # codes per draw so far

        rows_per_draw = pieces[0].work.rows_per_draw
        decoding = [offsets[-1]]  # draws that decoded the last step
        tokens = [0]  # codes decoded in this batch, over all draws

        def on_step(done: int, codes: torch.Tensor) -> list[bool]:
            decoded[0] = done
            tokens[0] += decoding[0]
            live = [p.ticket.live for p in pieces]
            decoding[0] = sum(p.stop - p.start for p, w in zip(pieces, live, strict=True) if w)
            if not any(live):
                return live  # everyone left: stop at this step
            self._running_rows = rows_per_draw * decoding[0]
            if done % g == 0:
                for p in pieces:
                    t = p.ticket
                    codes_done = t.done_draws * steps + (p.stop - p.start) * done
                    t.emit("progress", {"codes_done": codes_done, "codes_total": p.work.draws * steps})
                if done < steps and (done // g) % self.preview_rows == 0:
                    self._previews(pieces, offsets, codes.view(-1, g, g), done // g)
            return live  # a request gone since the last step leaves the batch now

        start = time.perf_counter()
        try:
            codes = decode_parts(t2i, parts, settings, on_step)
        except Exception as e:
            logger.exception("a text-to-image batch failed")
            for p in pieces:
                p.ticket.emit("error", e)
            return
        finally:
            self._running_rows = 0
        seconds = time.perf_counter() - start
        self._batch_seconds = 0.7 * self._batch_seconds + 0.3 * seconds
        rows = sum(p.stop - p.start for p in pieces) * pieces[0].work.rows_per_draw
        self.metrics.batch(rows / self.max_batch_rows, tokens[0], seconds)
        logger.info("batch of %d request(s), %d rows: %.2f s", len(pieces), rows, seconds)
        if codes is None:
            logger.info("batch stopped after %d of %d codes: its requests went away", decoded[0], steps)
            return
        complete: list[tuple[Ticket, ImageWork]] = []
        for piece, part_codes in zip(pieces, codes, strict=True):
            if part_codes is None:  # its request left the batch
                continue
            t = piece.ticket
            t.codes.append(part_codes)
            t.done_draws += piece.stop - piece.start
            if t.done_draws == t.work.draws and t.live:  # type: ignore[union-attr]
                complete.append((t, piece.work))
        # Pixels per request; post-selection scores of the requests of one prompt in one pass.
        results = finish_all(self.pipeline, [(work, torch.cat(t.codes)) for t, work in complete])
        for (t, _), result in zip(complete, results, strict=True):
            if isinstance(result, Exception):
                logger.error("finishing a text-to-image request failed: %s", result, exc_info=result)
                t.emit("error", result)
            else:
                self._finished(t, result, seconds)

    def _previews(self, pieces: list[Piece], offsets: list[int], codes: torch.Tensor, rows: int) -> None:
        """Partial images (candidate 0 of each requested image) for the requests that stream."""
        wanted: list[tuple[Piece, int, int]] = []  # (piece, image index, row in codes)
        for piece, offset in zip(pieces, offsets, strict=False):
            work = piece.work
            if not (work.previews and piece.ticket.live):
                continue
            for draw in range(piece.start, piece.stop):
                if draw % work.candidates == 0:
                    wanted.append((piece, draw // work.candidates, offset + draw - piece.start))
        if not wanted:
            return
        t2i = self.pipeline.text_to_image
        assert t2i is not None
        shown = codes[[w[2] for w in wanted]]  # [M, h, w]
        for k, (piece, _, _) in enumerate(wanted):  # a modified prompt shows its modifier at once
            if piece.work.split is not None:
                shown[k] = piece.work.split.modifier.apply(shown[k])
        pixels = preview_pixels(t2i, shown, rows)  # [M, 3, H, W]
        pngs = encode_images(to_pil(pixels))
        for piece in {w[0] for w in wanted}:
            images = [
                {"index": i, "png": png} for (p, i, _), png in zip(wanted, pngs, strict=True) if p is piece
            ]
            piece.ticket.emit(
                "preview", {"rows": rows, "of": t2i.image_tokenizer.grid_size, "images": images}
            )


__all__ = ["Busy", "Scheduler", "Ticket", "deadline_message"]
