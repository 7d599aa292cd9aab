"""``POST /api/edit`` on the shipped default model: the bytes of ``pipe.edit``, and bad input refused."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from required import skip_or_fail

try:
    from fastapi.testclient import TestClient
except (ImportError, RuntimeError) as e:  # no [server] extra, or Starlette's TestClient without httpx2
    skip_or_fail(f"FastAPI's TestClient cannot run: {e}", module=True)
from server_helpers import decode_png, png_b64  # noqa: E402

from cogview.images import png_bytes  # noqa: E402
from cogview.pipeline import CogViewPipeline  # noqa: E402
from cogview.server import create_app  # noqa: E402

PROMPT = "蓝色背景上左边有一个红色圆形"  # "a red circle on the left, on a blue background"


@pytest.fixture(scope="module")
def shipped() -> CogViewPipeline:
    return CogViewPipeline.from_pretrained()


@pytest.fixture(scope="module")
def api(shipped: CogViewPipeline) -> Iterator[TestClient]:
    with TestClient(create_app(shipped, model_name="default")) as c:
        yield c


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    image = Image.new("RGB", (32, 32), (30, 60, 200))
    image.paste((220, 30, 30), (4, 10, 14, 20))
    return image


def test_an_inpainted_box_reports_its_code_cells_and_seed(
    api: TestClient, scene: Image.Image, shipped: CogViewPipeline
) -> None:
    body = {"image": png_b64(scene), "prompt": PROMPT, "box": [0, 8, 16, 24], "seed": 3, "grow": 0}
    reply = api.post("/api/edit", json=body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert decode_png(data["png"]).size == (data["width"], data["height"]) == (32, 32)
    assert data["mode"] == "inpaint" and data["seed"] == 3 and data["candidates"] == 1
    # A code cell is cell x cell px (2 on a 16x16 grid): the box's columns 0-15, rows 8-23 are
    # cells 0-7 of rows 4-11 there.
    g = shipped.image_tokenizer.grid_size
    cell = 32 // g
    expected = [[int(8 // cell <= r < 24 // cell and c < 16 // cell) for c in range(g)] for r in range(g)]
    assert data["regenerated"] == expected and data["regenerated_codes"] == (16 // cell) ** 2
    assert 'cogview_request_latency_seconds_count{job="edit"}' in api.get("/metrics").text
    drawn = api.post("/api/edit", json={**body, "seed": None}).json()["seed"]
    assert 0 <= drawn < 2**53  # a random seed comes back, JSON-safe


MASK = Image.new("L", (32, 32))
MASK.paste(255, (20, 2, 30, 12))
EDITS = [
    # (JSON region and options, pipe.edit's keyword arguments)
    ({"box": [0, 8, 16, 24], "grow": 0}, {"box": (0, 8, 16, 24), "grow": 0}),
    ({"mask": png_b64(MASK), "candidates": 2}, {"mask": MASK, "candidates": 2}),
    ({"rows": 5}, {"rows": 5}),  # completion: best of 4 by the caption model
    (
        {"prefix": 40, "select": "suffix", "candidates": 1},
        {"prefix": 40, "select": "suffix", "candidates": 1},
    ),
    ({"shift": [-8, 4]}, {"shift": (-8, 4)}),
    ({"pad": [4, 0, 4, 8], "guidance_scale": 2.5}, {"pad": (4, 0, 4, 8), "guidance_scale": 2.5}),
    ({"pad": 6}, {"pad": 6}),
    ({"box": [8, 8, 24, 24], "negative_prompt": "蓝色"}, {"box": (8, 8, 24, 24), "negative_prompt": "蓝色"}),
    ({"strength": 0.3, "temperature": 0.8, "top_k": 5}, {"strength": 0.3, "temperature": 0.8, "top_k": 5}),
]


@pytest.mark.parametrize(("fields", "kwargs"), EDITS)
def test_edit_returns_the_png_bytes_of_pipe_edit(
    api: TestClient, shipped: CogViewPipeline, scene: Image.Image, fields: dict, kwargs: dict
) -> None:
    reply = api.post("/api/edit", json={"image": png_b64(scene), "prompt": PROMPT, "seed": 11, **fields})
    assert reply.status_code == 200, reply.text
    direct = shipped.edit(scene, PROMPT, seed=11, **kwargs)
    assert base64.b64decode(reply.json()["png"]) == png_bytes([direct])[0]


def _png(size: tuple[int, int], color: int = 0) -> str:
    return png_b64(Image.new("L", size, color))


SCENE = _png((32, 32), 90)
BAD_INPUTS = [
    # (extra JSON fields, status, part of the error message)
    (
        {},
        422,
        "give exactly one region argument of ['box', 'mask', 'pad', 'prefix', 'rows', 'shift', 'strength']; got none",
    ),
    ({"rows": 4, "strength": 0.5}, 422, "got ['rows', 'strength']"),
    ({"box": [0, 0, 4]}, 422, "box: List should have at least 4 items"),
    ({"shift": [8]}, 422, "shift"),
    ({"rows": 2, "steps": 3}, 422, "unknown field 'steps'; /api/edit takes: box, candidates"),
    ({"mask": _png((16, 16), 255)}, 400, "mask is 16x16 pixels, the image 32x32: give a mask of its size"),
    ({"mask": _png((32, 32), 0)}, 400, "the mask selects no pixel"),
    ({"mask": "@@"}, 400, "mask is not valid base64"),
    ({"box": [0, 0, 40, 8]}, 400, "box (0, 0, 40, 8) must satisfy"),
    ({"rows": 40}, 400, "rows=40 keeps the whole"),  # more rows than any grid has
    ({"strength": 1.5}, 400, "strength=1.5 must lie in (0, 1]"),
    ({"shift": [0, 0]}, 400, "less than half a code cell"),
    ({"pad": [40, 0, 0, 0]}, 400, "leaves no room for the image"),
    ({"rows": 2, "image": base64.b64encode(b"hello").decode()}, 400, "image is not an image file"),
    ({"rows": 2, "image": _png((5000, 5000))}, 400, "5000x5000 pixels"),
    ({"rows": 2, "prompt": " "}, 400, "empty prompt"),
    ({"rows": 2, "negative_prompt": "blue", "guidance_scale": 1}, 400, "guidance_scale above 1"),
]


@pytest.mark.parametrize(("fields", "status", "message"), BAD_INPUTS)
def test_bad_edits_are_4xx_with_pipe_edit_s_message(
    api: TestClient, fields: dict[str, Any], status: int, message: str
) -> None:
    reply = api.post("/api/edit", json={"image": SCENE, "prompt": PROMPT, **fields})
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]


def test_an_oversized_edit_body_is_413(shipped: CogViewPipeline) -> None:
    with TestClient(create_app(shipped, max_body_bytes=1000)) as small:
        body = {"image": png_b64(Image.effect_noise((64, 64), 50)), "prompt": PROMPT, "strength": 0.5}
        reply = small.post("/api/edit", json=body)
        assert reply.status_code == 413 and "larger than 1000 bytes" in reply.json()["error"]
