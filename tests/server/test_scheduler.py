"""The scheduler on a real uvicorn server with the shipped model: batching keeps every request's
PNG bytes, a full queue is 503 at once, a disconnect frees its rows, the progress stream ends with
the JSON endpoint's result, and /api/health and /metrics report it."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from required import skip_or_fail

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as e:
    skip_or_fail(f"the [server] extra is not installed: {e}", module=True)

from server_helpers import decode_png, live_server  # noqa: E402

from cogview.pipeline import CogViewPipeline  # noqa: E402
from cogview.server import create_app  # noqa: E402
from cogview.server.scheduler import Scheduler  # noqa: E402


@pytest.fixture(scope="module")
def pipe() -> CogViewPipeline:
    return CogViewPipeline.from_pretrained()


def grid(pipe: CogViewPipeline) -> int:
    """Code rows (= columns) per image of the shipped model."""
    return pipe.image_tokenizer.grid_size


def codes(pipe: CogViewPipeline) -> int:
    return grid(pipe) ** 2


@contextmanager
def serving(pipe: CogViewPipeline, **options: Any) -> Iterator[tuple[str, Scheduler]]:
    app = create_app(pipe, **options)
    try:
        with live_server(app) as url:
            yield url, app.state.scheduler
    finally:
        app.state.scheduler.close()


def post(url: str, body: dict, timeout: float = 120) -> tuple[int, Any, Any]:
    """(status, headers (case-insensitive), parsed JSON)."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.headers, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def open_stream(url: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    connection.request("POST", "/api/generate/stream", json.dumps(body), {"Content-Type": "application/json"})
    return connection, connection.getresponse()


def events(
    reply: http.client.HTTPResponse, until: Callable[[str], bool] = lambda kind: False
) -> Iterator[tuple[str, Any]]:
    """Server-sent events of ``reply`` as (kind, data), up to the first kind ``until`` accepts."""
    kind = ""
    for raw in reply:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            yield kind, json.loads(line[len("data: ") :])
            if until(kind):
                return


def metric(url: str, name: str) -> float:
    """The value of one sample of /metrics (0 when absent)."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as reply:
        text = reply.read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else 0.0


def wait_for(condition: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    return thread, out


BODIES = [
    # Two negative prompts and the empty one: three unconditional rows in one batch.
    {
        "prompt": "a red circle on the left",
        "num_images": 1,
        "seed": 1,
        "candidates": 1,
        "negative_prompt": "blue",
    },
    {"prompt": "手写数字7", "num_images": 2, "seed": 2, "candidates": 1, "negative_prompt": "手写数字1"},
    {"prompt": "a blue square", "num_images": 1, "seed": 3, "candidates": 2},  # reranked
    {"prompt": "a blue square", "num_images": 2, "seed": 7, "candidates": 2},  # reranked with the one above
    # a skin-tone modifier: its base is drawn in the batch, reranked, then mapped
    {"prompt": "waving hand dark skin tone", "num_images": 1, "seed": 5, "candidates": 2},
    {
        "prompt": "一个绿色三角形",
        "num_images": 1,
        "seed": 4,
        "candidates": 1,
        "temperature": 0.7,
    },  # own batch
]


@pytest.mark.parametrize("selection", ["caption", "joint"])
def test_concurrent_requests_give_the_bytes_of_sequential_ones(pipe: CogViewPipeline, selection: str) -> None:
    pipe.selection = selection  # the "joint" score adds each result's own log p(codes | prompt)
    try:
        _concurrent_equals_sequential(pipe)
    finally:
        pipe.selection = "caption"


def _concurrent_equals_sequential(pipe: CogViewPipeline) -> None:
    with serving(pipe, batch_wait=1.0) as (url, _):
        sequential = [post(url + "/api/generate", b) for b in BODIES]
        batches = metric(url, "cogview_batch_occupancy_count")
        assert batches == len(BODIES)
        threads = [in_thread(lambda b=b: post(url + "/api/generate", b)) for b in BODIES]
        for thread, _ in threads:
            thread.join(timeout=120)
        concurrent = [out[0] for _, out in threads]
        # Five requests with the model's settings share one batch; the one at temperature 0.7 runs alone.
        # The two of one prompt are post-selected in one scoring pass, with their scores alone.
        assert metric(url, "cogview_batch_occupancy_count") - batches == 2
    assert [s for s, _, _ in concurrent] == [200] * len(BODIES)
    for (_, _, alone), (_, _, together) in zip(sequential, concurrent, strict=True):
        assert together == alone  # every field: images (PNG bytes), seeds, settings, rerank scores
    assert sequential[2][2]["rerank"]["candidates"] == 2
    assert sequential[2][2]["rerank"]["score"] == pipe.selection
    assert sequential[0][2]["negative_prompt"] == "blue" and "negative_prompt" not in sequential[2][2]
    toned = sequential[4][2]
    assert toned["prompt"] == "waving hand dark skin tone" and "modifier" not in sequential[2][2]
    assert toned["modifier"] == {"name": "dark", "drawn_prompt": "waving hand"}
    library = pipe.generate("waving hand dark skin tone", 1, seed=5, candidates=2)
    assert [decode_png(im["png"]).tobytes() for im in toned["images"]] == [im.tobytes() for im in library]
    # the library's images for the same request
    library = pipe.generate(BODIES[1]["prompt"], 2, seed=2, candidates=1, negative_prompt="手写数字1")
    assert [decode_png(im["png"]).tobytes() for im in sequential[1][2]["images"]] == [
        im.tobytes() for im in library
    ]


def test_a_full_queue_is_503_with_retry_after_at_once(pipe: CogViewPipeline) -> None:
    long = {"prompt": "a red circle", "num_images": 4, "seed": 1, "candidates": 1}
    short = {"prompt": "a blue square", "num_images": 1, "seed": 2, "candidates": 1}
    with serving(pipe, batching=False, max_queue=1) as (url, scheduler):
        running, first = in_thread(lambda: post(url + "/api/generate", long))
        wait_for(lambda: scheduler.status()["running_rows"] > 0)
        waiting, second = in_thread(lambda: post(url + "/api/generate", short))
        wait_for(lambda: scheduler.status()["queue_depth"] == 1)
        start = time.perf_counter()
        status, headers, reply = post(url + "/api/generate", short)
        assert status == 503 and time.perf_counter() - start < 2
        assert int(headers["Retry-After"]) >= 1 and "busy" in reply["error"]
        for thread in (running, waiting):
            thread.join(timeout=120)
        assert first[0][0] == 200 and second[0][0] == 200
        assert metric(url, 'cogview_requests_dropped_total{reason="queue_full"}') == 1
        assert metric(url, "cogview_batch_occupancy_count") == 2  # lock mode: one request per batch


def test_a_request_past_its_deadline_is_503_and_its_batch_stops(pipe: CogViewPipeline) -> None:
    # 16 guided images of 64 codes take about a second on one core: a quarter-second deadline
    # stops them part way.
    body = {"prompt": "a red circle", "num_images": 16, "seed": 1, "candidates": 1}
    with serving(pipe, deadline=0.25) as (url, scheduler):
        start = time.perf_counter()
        status, headers, reply = post(url + "/api/generate", body)
        assert status == 503 and "deadline" in reply["error"] and int(headers["Retry-After"]) >= 1
        assert time.perf_counter() - start < 2.5
        wait_for(lambda: scheduler.status()["running_rows"] == 0, 5)  # stopped at the next step
        assert metric(url, "cogview_image_tokens_total") < 16 * codes(pipe)


def test_a_disconnect_frees_its_rows(pipe: CogViewPipeline) -> None:
    first = {"prompt": "a red circle", "num_images": 4, "seed": 1, "candidates": 1}
    second = {"prompt": "a blue square", "num_images": 8, "seed": 2, "candidates": 1}
    with serving(pipe, batch_wait=0) as (url, scheduler):
        running, out = in_thread(lambda: post(url + "/api/generate", first))
        wait_for(lambda: scheduler.status()["running_rows"] > 0)
        # Waiting behind a batch: gone from the queue at once, never decoded.
        connection, reply = open_stream(url, second)
        assert [k for k, _ in events(reply, until=lambda k: k == "queued")] == ["queued"]
        connection.close()
        wait_for(lambda: scheduler.status()["queue_depth"] == 0, 10)
        assert scheduler.status()["running_rows"] > 0  # the first request still decodes
        running.join(timeout=120)
        assert out[0][0] == 200
        assert metric(url, "cogview_batch_occupancy_count") == 1
        assert metric(url, "cogview_image_tokens_total") == 4 * codes(pipe)
        # Alone in its batch, decoding: the batch stops at the next step.
        connection, reply = open_stream(url, second)
        assert any(k == "progress" for k, _ in events(reply, until=lambda k: k == "progress"))
        connection.close()
        start = time.perf_counter()
        wait_for(lambda: scheduler.status()["running_rows"] == 0, 10)
        assert time.perf_counter() - start < 2
        assert metric(url, "cogview_image_tokens_total") < (4 + 8) * codes(pipe)
        assert metric(url, 'cogview_requests_dropped_total{reason="disconnect"}') == 2


def test_a_disconnect_mid_batch_frees_its_rows_and_the_others_keep_their_bytes(pipe: CogViewPipeline) -> None:
    staying = {"prompt": "a red circle", "num_images": 2, "seed": 1, "candidates": 1}
    leaving = {"prompt": "a blue square", "num_images": 8, "seed": 2, "candidates": 1}
    with serving(pipe, batch_wait=1.0) as (url, scheduler):
        alone = post(url + "/api/generate", staying)
        tokens_alone = metric(url, "cogview_image_tokens_total")
        assert tokens_alone == 2 * codes(pipe)
        connection, reply = open_stream(url, leaving)
        running, out = in_thread(lambda: post(url + "/api/generate", staying))
        # Both in one batch (guided: 2 rows per image): 4 + 16 rows.
        assert any(k == "progress" for k, _ in events(reply, until=lambda k: k == "progress"))
        assert scheduler.status()["running_rows"] == 20
        connection.close()
        wait_for(lambda: scheduler.status()["running_rows"] == 4, 10)  # the leaving rows are gone
        running.join(timeout=120)
        assert metric(url, "cogview_batch_occupancy_count") == 2
        decoded = metric(url, "cogview_image_tokens_total") - tokens_alone
        # the 8 images stopped after a row or more
        assert 2 * codes(pipe) + 8 * grid(pipe) <= decoded < 10 * codes(pipe)
    assert out[0][0] == 200 and out[0][2] == alone[2]  # the same PNG bytes as alone


def test_the_stream_shows_progress_and_previews_then_the_json_result(pipe: CogViewPipeline) -> None:
    body = {"prompt": "蓝色背景上左边有一个红色圆形", "num_images": 2, "seed": 5}  # the model's candidates
    with serving(pipe) as (url, _):
        connection, reply = open_stream(url, body)
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/event-stream")
        streamed = list(events(reply))
        connection.close()
        status, _, direct = post(url + "/api/generate", body)
        assert status == 200
        kinds = [k for k, _ in streamed]
        assert kinds[0] == "queued" and kinds[-1] == "result" and kinds.count("result") == 1
        assert streamed[-1][1] == direct  # the same payload, byte for byte in every PNG
        progress = [d["codes_done"] for k, d in streamed if k == "progress"]
        total = 2 * pipe.candidates * codes(pipe)
        assert progress == sorted(set(progress)) and progress[-1] == total and len(progress) == grid(pipe)
        previews = [d for k, d in streamed if k == "preview"]
        assert [p["rows"] for p in previews] == list(range(2, grid(pipe), 2))
        assert all([im["index"] for im in p["images"]] == [0, 1] for p in previews)
        first = decode_png(previews[0]["images"][0]["png"])
        assert first.size == (32, 32)
        done = 2 * 32 // grid(pipe)  # pixel rows of the two decoded code rows
        assert first.crop((0, done, 32, 32)).getcolors() == [((32 - done) * 32, (128, 128, 128))]  # grey
        assert len(first.crop((0, 0, 32, done)).getcolors()) > 1  # the decoded code rows have content

        bad, _, error = post(url + "/api/generate/stream", {"prompt": ""})
        assert bad == 422 and "prompt" in error["error"]  # refused before any stream starts

        with urllib.request.urlopen(url + "/api/health", timeout=30) as health:
            state = json.loads(health.read())
        assert health.status == 200 and state["status"] == "ok" and state["scheduler"] == "batch"
        assert state["queue_depth"] == 0 and state["max_queue"] == 64
        for name, least in [
            ('cogview_requests_total{endpoint="/api/generate",status="200"}', 1),
            ('cogview_requests_total{endpoint="/api/generate/stream",status="422"}', 1),
            ('cogview_request_latency_seconds_count{job="generate"}', 2),
            ("cogview_batch_occupancy_count", 2),
            ("cogview_image_tokens_total", 2 * total),
            ("cogview_image_tokens_per_second", 1),
        ]:
            assert metric(url, name) >= least, name
        assert metric(url, "cogview_queue_depth") == 0


def test_a_modified_prompt_streams_previews_with_its_modifier(pipe: CogViewPipeline) -> None:
    """Previews of a skin-tone prompt show the tone already: nearer the final image than the base."""
    body = {"prompt": "kiss dark skin tone", "num_images": 1, "seed": 3, "candidates": 1}
    with serving(pipe) as (url, _):
        connection, reply = open_stream(url, body)
        streamed = list(events(reply))
        connection.close()
    result = streamed[-1][1]
    assert result["modifier"] == {"name": "dark", "drawn_prompt": "kiss"}
    last = [d for k, d in streamed if k == "preview"][-1]
    top = 32 * (last["rows"] - 1) // grid(pipe)  # pixel rows away from the preview's grey edge
    shown = np.asarray(decode_png(last["images"][0]["png"]), dtype=float)[:top]
    final = np.asarray(decode_png(result["images"][0]["png"]), dtype=float)[:top]
    base = np.asarray(pipe.generate("kiss", 1, seed=3, candidates=1)[0], dtype=float)[:top]
    assert np.abs(shown - final).mean() < 0.5 * np.abs(shown - base).mean()
