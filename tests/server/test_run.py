"""Real servers: uvicorn in a thread (the model on one thread, event loop free) and ``cogview serve``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from required import skip_or_fail

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as e:
    skip_or_fail(f"the [server] extra is not installed: {e}", module=True)

from server_helpers import decode_png, live_server  # noqa: E402

from cogview.cli import main  # noqa: E402
from cogview.pipeline import CogViewPipeline  # noqa: E402
from cogview.server import create_app  # noqa: E402
from cogview.server.run import is_loopback  # noqa: E402
from cogview.server.scheduler import (  # noqa: E402
    DEFAULT_BATCH_WAIT,
    DEFAULT_DEADLINE,
    DEFAULT_MAX_BATCH_ROWS,
    DEFAULT_MAX_QUEUE,
)


def http(url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, Any]:
    """A real HTTP request: (status, parsed JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status, raw, kind = reply.status, reply.read(), reply.headers.get_content_type()
    except urllib.error.HTTPError as e:
        status, raw, kind = e.code, e.read(), e.headers.get_content_type()
    return status, json.loads(raw) if kind == "application/json" else raw.decode()


def test_uvicorn_serves_requests_on_one_model_thread_off_the_event_loop(tiny_pipe: CogViewPipeline) -> None:
    threads_seen: set[str] = set()
    hook = tiny_pipe.text_to_image.transformer.register_forward_pre_hook(
        lambda module, args: threads_seen.add(threading.current_thread().name)
    )
    app = create_app(tiny_pipe, batch_wait=0.3)  # a long gathering window: /api/info must not wait for it
    try:
        with live_server(app) as url:
            status, page = http(url + "/")
            assert status == 200 and 'id="prompt"' in page
            replies: list[tuple[int, Any]] = []
            body = {"prompt": "a red circle", "num_images": 1, "seed": 2}
            threads = [
                threading.Thread(target=lambda: replies.append(http(url + "/api/generate", body)))
                for _ in range(2)
            ]
            for t in threads:
                t.start()
            time.sleep(0.1)
            start = time.perf_counter()
            status, info = http(url + "/api/info")
            info_seconds = time.perf_counter() - start
            for t in threads:
                t.join(timeout=60)
            assert status == 200 and info["jobs"][0] == "text_to_image"
            assert info_seconds < 0.4, "a generation blocked the event loop"
            assert threads_seen == {"cogview-scheduler"}, "the model ran outside the scheduler's thread"
            assert [s for s, _ in replies] == [200, 200]
            assert replies[0][1]["images"] == replies[1][1]["images"]
            assert decode_png(replies[0][1]["images"][0]["png"]).size == (32, 32)
            status, error = http(url + "/api/generate", {"prompt": "a", "num_images": 99})
            assert status == 422 and "num_images" in error["error"]
    finally:
        hook.remove()
        app.state.scheduler.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cogview_serve_runs_a_server_with_the_cli_s_determinism(tiny_model_dir: Path, client: Any) -> None:
    port = _free_port()
    args = ["serve", "--model", str(tiny_model_dir), "--port", str(port), "--threads", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cogview", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                status, info = http(url + "/api/info", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "cogview serve did not answer within 120 s"
                time.sleep(0.2)
        assert status == 200 and info["model"] == str(tiny_model_dir)
        body = {"prompt": "一个红色圆形", "num_images": 2, "seed": 11}
        status, served = http(url + "/api/generate", body)
        assert status == 200
        in_process = client.post("/api/generate", json=body).json()
        assert [im["png"] for im in served["images"]] == [im["png"] for im in in_process["images"]]
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl+C: a clean stop, no traceback
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in output, output
    assert f"open http://127.0.0.1:{port}/" in output and "1 torch threads" in output


def test_serve_help_and_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for part in ("--model", "--host", "--port", "--threads", "127.0.0.1", "/api/generate"):
        assert part in text
    assert main(["serve", "--threads", "0"]) == 2
    assert "threads must be a positive integer, got 0" in capsys.readouterr().err
    help_text = " ".join(text.split())
    for flag, default in [
        ("--max-queue", DEFAULT_MAX_QUEUE),
        ("--max-batch-rows", DEFAULT_MAX_BATCH_ROWS),
        ("--deadline", DEFAULT_DEADLINE),
        ("--batch-wait-ms", DEFAULT_BATCH_WAIT * 1000),
    ]:
        assert f"{flag} " in help_text and f"(default: {default:g}" in help_text, flag
    assert "--scheduler {batch,lock}" in help_text
    assert main(["serve", "--max-queue", "0", "--port", "1"]) == 2
    assert "need max_queue >= 1" in capsys.readouterr().err


def test_serve_without_the_server_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == "cogview.server" or m.startswith("cogview.server.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now fails as if not installed
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'cogview[server]'" in err and "fastapi" in err


def test_loopback_hosts() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.5"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.10", "example.org"))
