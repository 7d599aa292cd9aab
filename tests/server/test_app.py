"""The HTTP API on a tiny random model through FastAPI's TestClient: results, determinism, errors."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from required import skip_or_fail

try:
    from fastapi.testclient import TestClient
except (ImportError, RuntimeError) as e:  # no [server] extra, or Starlette's TestClient without httpx2
    skip_or_fail(f"FastAPI's TestClient cannot run: {e}", module=True)
from server_helpers import decode_png, png_b64  # noqa: E402

from cogview.cli import main  # noqa: E402
from cogview.generation.batching import image_seed  # noqa: E402
from cogview.images import to_pil  # noqa: E402
from cogview.pipeline import CogViewPipeline  # noqa: E402
from cogview.server import create_app  # noqa: E402


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return to_pil(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def pngs(reply: dict) -> list[bytes]:
    return [base64.b64decode(im["png"]) for im in reply["images"]]


def test_info_reports_jobs_defaults_and_sizes(client: TestClient, tiny_pipe: CogViewPipeline) -> None:
    info = client.get("/api/info").json()
    assert info["jobs"] == ["text_to_image", "image_to_text", "super_resolution"]
    assert (
        info["sampling"]["text_to_image"]["default"] == tiny_pipe.text_to_image.sampling["default"].to_dict()
    )
    assert info["vocab"]["size"] == tiny_pipe.vocab.size and info["vocab"]["text_size"] == 576
    assert info["image_size"] == 32 and info["device"] == "cpu"
    assert info["limits"]["num_images"] == 16 and info["candidates"] == tiny_pipe.candidates == 1
    assert info["caption_candidates"] == 1 and info["selection"] == "caption" and info["limits"]["caption_candidates"] == 16
    assert info["modifiers"] == []  # a folder without modifiers.json


def test_openapi_schema_names_each_endpoint_s_body(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, model in [
        ("generate", "GenerateRequest"),
        ("caption", "CaptionRequest"),
        ("score", "ScoreRequest"),
        ("edit", "EditRequest"),
    ]:
        body = paths[f"/api/{path}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].endswith(model)
    assert "get" in paths["/api/info"]


def test_the_page_is_one_self_contained_file(client: TestClient) -> None:
    reply = client.get("/")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    page = reply.text
    ids = ("prompt", "generate", "caption-file", "edit-file", "edit-mode", "error")
    for part in (*(f'id="{i}"' for i in ids), "pixelated"):
        assert part in page
    assert 'src="http' not in page and 'href="http' not in page  # no CDN: the machine may be offline


def test_generate_returns_pngs_with_the_settings_and_seeds_used(client: TestClient) -> None:
    body = {"prompt": "a red circle", "num_images": 3, "seed": 5, "temperature": 0.7, "guidance_scale": 1}
    reply = client.post("/api/generate", json={**body, "min_p": 0.05})
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["seed"] == 5 and data["num_images"] == 3 and data["kind"] == "en"
    assert data["settings"]["temperature"] == 0.7 and data["settings"]["guidance_scale"] == 1.0
    assert data["settings"]["min_p"] == 0.05
    assert data["image_seeds"] == [image_seed(5, i) for i in range(3)]
    assert [im["seed"] for im in data["images"]] == data["image_seeds"]
    assert all(decode_png(im["png"]).size == (32, 32) for im in data["images"])


def test_same_seed_gives_the_png_bytes_of_cogview_generate(
    client: TestClient, tiny_model_dir: Path, tmp_path: Path
) -> None:
    prompt = "蓝色背景上左边有一个红色圆形"
    first = client.post("/api/generate", json={"prompt": prompt, "num_images": 2, "seed": 7}).json()
    again = client.post("/api/generate", json={"prompt": prompt, "num_images": 2, "seed": 7}).json()
    other = client.post("/api/generate", json={"prompt": prompt, "num_images": 2, "seed": 8}).json()
    assert first["kind"] == "zh" and pngs(first) == pngs(again)
    assert pngs(first) != pngs(other)
    args = ["generate", prompt, "-n", "2", "--seed", "7", "--model", str(tiny_model_dir)]
    assert main([*args, "--out", str(tmp_path), "--no-progress"]) == 0
    assert pngs(first) == [(tmp_path / f"000_00{i}.png").read_bytes() for i in range(2)]


def test_a_negative_prompt_gives_the_png_bytes_of_cogview_generate(
    client: TestClient, tiny_model_dir: Path, tmp_path: Path
) -> None:
    body = {"prompt": "a red circle", "num_images": 2, "seed": 3, "candidates": 1}
    plain = client.post("/api/generate", json=body).json()
    away = client.post("/api/generate", json={**body, "negative_prompt": "蓝色"}).json()
    assert away["negative_prompt"] == "蓝色" and pngs(away) != pngs(plain)
    args = ["generate", "a red circle", "-n", "2", "--seed", "3", "--candidates", "1", "--model", str(tiny_model_dir)]
    assert main([*args, "--negative-prompt", "蓝色", "--out", str(tmp_path), "--no-progress"]) == 0
    assert pngs(away) == [(tmp_path / f"000_00{i}.png").read_bytes() for i in range(2)]
    record = json.loads((tmp_path / "generate.json").read_text(encoding="utf-8"))["prompts"][0]
    assert record["negative_prompt"] == "蓝色"


def test_a_random_seed_is_returned_json_safe_and_reproduces(client: TestClient) -> None:
    drawn = client.post("/api/generate", json={"prompt": "a digit", "num_images": 1}).json()
    assert 0 <= drawn["seed"] < 2**53
    again = client.post("/api/generate", json={"prompt": "a digit", "num_images": 1, "seed": drawn["seed"]})
    assert pngs(again.json()) == pngs(drawn)


def test_the_models_post_selection_default_applies_when_candidates_is_left_out(tiny_model_dir: Path) -> None:

    pipe = CogViewPipeline.from_pretrained(tiny_model_dir)
    pipe.candidates = 5
    with TestClient(create_app(pipe)) as c:
        data = c.post("/api/generate", json={"prompt": "a red circle", "num_images": 2, "seed": 1}).json()
        assert data["candidates"] == 5 and len(data["rerank"]["scores"][0]) == 5
        off = c.post(
            "/api/generate", json={"prompt": "a red circle", "num_images": 2, "seed": 1, "candidates": 1}
        )
        assert off.json()["candidates"] == 1 and "rerank" not in off.json()
        too_many = c.post("/api/generate", json={"prompt": "a red circle", "num_images": 16, "seed": 1})
        assert too_many.status_code == 400 and "at most 64 per request" in too_many.json()["error"]


def test_candidates_keep_the_best_scored_image(client: TestClient) -> None:
    body = {"prompt": "a red circle", "num_images": 2, "candidates": 3, "seed": 1}
    data = client.post("/api/generate", json=body).json()
    assert data["candidates"] == 3 and len(data["images"]) == 2
    scores, kept = data["rerank"]["scores"], data["rerank"]["kept"]
    assert [max(range(3), key=row.__getitem__) for row in scores] == kept
    assert [im["seed"] for im in data["images"]] == [image_seed(1, i * 3 + k) for i, k in enumerate(kept)]


def test_a_request_chooses_the_post_selection_score(client: TestClient, tiny_pipe: CogViewPipeline) -> None:
    body = {"prompt": "a red circle", "num_images": 2, "candidates": 3, "seed": 1}
    for selection in ("caption", "joint"):
        data = client.post("/api/generate", json={**body, "selection": selection}).json()
        library = tiny_pipe.generate_results("a red circle", 2, candidates=3, seed=1, selection=selection)[0]
        assert data["rerank"]["score"] == selection
        assert data["rerank"]["scores"] == library.rerank["scores"] and data["rerank"]["kept"] == library.rerank["kept"]
    assert client.post("/api/generate", json=body).json()["rerank"]["score"] == tiny_pipe.selection == "caption"
    bad = client.post("/api/generate", json={**body, "selection": "clip"})
    assert bad.status_code == 422 and "selection" in bad.text


def test_caption_is_seeded_and_in_the_language_asked(client: TestClient, images: list[Image.Image]) -> None:
    body = {"image": png_b64(images[0]), "language": "en", "num_captions": 2, "top_k": 5, "seed": 3}
    first = client.post("/api/caption", json=body).json()
    assert first["seed"] == 3 and len(first["captions"]) == 2
    assert all(c.isascii() for c in first["captions"])
    assert client.post("/api/caption", json=body).json()["captions"] == first["captions"]
    data_url = "data:image/png;base64," + png_b64(images[0])  # what the page's FileReader sends
    greedy = client.post("/api/caption", json={"image": data_url, "language": "en"})
    assert greedy.status_code == 200 and len(greedy.json()["captions"]) == 1


def test_caption_candidates_return_the_library_s_choice(
    client: TestClient, tiny_pipe: CogViewPipeline, images: list[Image.Image]
) -> None:
    body = {"image": png_b64(images[0]), "language": "en", "candidates": 4, "seed": 5}
    reply = client.post("/api/caption", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["captions"] == tiny_pipe.caption(images[0], "en", candidates=4, seed=5)
    beams = {"image": png_b64(images[0]), "language": "en", "num_captions": 2, "beams": 3}
    reply = client.post("/api/caption", json=beams)
    assert reply.status_code == 200, reply.text
    assert reply.json()["captions"] == tiny_pipe.caption(images[0], "en", 2, beams=3)
    refused = client.post("/api/caption", json={**beams, "top_k": 4})
    assert refused.status_code == 422 and "does not sample" in refused.text


def test_score_matches_the_library_and_ranks_best_first(
    client: TestClient, tiny_pipe: CogViewPipeline, images: list[Image.Image]
) -> None:
    prompts = ["a red circle", "一个蓝色方块"]
    data = client.post(
        "/api/score", json={"prompts": prompts, "images": [png_b64(im) for im in images]}
    ).json()
    assert [r["prompt"] for r in data["results"]] == prompts
    for r in data["results"]:
        assert r["scores"] == pytest.approx(tiny_pipe.score(r["prompt"], images))
        assert [r["scores"][i] for i in r["ranking"]] == sorted(r["scores"], reverse=True)
        assert all(loss > 0 for loss in r["caption_loss"])
    best = [max(range(2), key=lambda k: data["results"][k]["scores"][i]) for i in range(3)]
    assert data["best_prompt"] == best
    one = client.post("/api/score", json={"prompt": prompts[0], "images": [png_b64(images[0])]}).json()
    assert one["results"][0]["scores"] == pytest.approx(data["results"][0]["scores"][:1])


def test_upscale_doubles_the_image(client: TestClient, images: list[Image.Image]) -> None:
    data = client.post("/api/upscale", json={"image": png_b64(images[0]), "seed": 1}).json()
    assert decode_png(data["png"]).size == (64, 64) and (data["width"], data["height"]) == (64, 64)


def test_jobs_the_model_lacks_are_404_with_what_to_do(tiny_pipe: CogViewPipeline, images) -> None:
    p = tiny_pipe
    t2i_only = CogViewPipeline(
        None, p.text_tokenizer, p.image_tokenizer, p.vocab, job_models={"text_to_image": p.transformer}
    )
    with TestClient(create_app(t2i_only)) as c:
        assert c.get("/api/info").json()["jobs"] == ["text_to_image"]
        image = png_b64(images[0])
        for path, body in [
            ("/api/upscale", {"image": image}),
            ("/api/caption", {"image": image}),
            ("/api/score", {"prompt": "a", "images": [image]}),
            ("/api/generate", {"prompt": "a", "candidates": 2}),
        ]:
            reply = c.post(path, json=body)
            assert reply.status_code == 404, path
            assert "this model does not" in reply.json()["error"] and "--model" in reply.json()["error"]
        assert c.post("/api/generate", json={"prompt": "a", "num_images": 1}).status_code == 200


def _png(size: tuple[int, int], mode: str = "RGB") -> str:
    return png_b64(Image.new(mode, size))


def _raw(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


GOOD = _png((32, 32))
BAD_INPUTS = [
    # (path, JSON body, status, part of the error message)
    ("/api/generate", {}, 422, "prompt is required"),
    ("/api/generate", {"prompt": ""}, 422, "prompt: String should have at least 1 character"),
    ("/api/generate", {"prompt": "   "}, 400, "empty prompt"),
    ("/api/generate", {"prompt": "x" * 501}, 422, "at most 500 characters"),
    (
        "/api/generate",
        {"prompt": "x" * 500},
        400,
        "text tokens long; this model reads at most 61: shorten it",
    ),
    ("/api/generate", {"prompt": "a", "negative_prompt": "b", "guidance_scale": 1}, 400, "guidance_scale above 1"),
    ("/api/generate", {"prompt": "a", "negative_prompt": "x" * 501}, 422, "at most 500 characters"),
    ("/api/generate", {"prompt": "a", "negative_prompt": "x" * 500}, 400, "negative prompt is longer"),
    ("/api/generate", {"prompt": "a", "modifiers": "yes"}, 422, "modifiers: Input should be a valid boolean"),
    ("/api/generate", {"prompt": "a", "num_images": 0}, 422, "num_images"),
    (
        "/api/generate",
        {"prompt": "a", "num_images": 17},
        422,
        "num_images: Input should be less than or equal to 16",
    ),
    ("/api/generate", {"prompt": "a", "num_images": "4"}, 422, "num_images: Input should be a valid integer"),
    ("/api/generate", {"prompt": "a", "num_images": True}, 422, "num_images"),
    (
        "/api/generate",
        {"prompt": "a", "steps": 5},
        422,
        "unknown field 'steps'; /api/generate takes: candidates, guidance_scale, min_p",
    ),
    ("/api/generate", {"prompt": "a", "temperature": 0}, 422, "temperature"),
    ("/api/generate", {"prompt": "a", "top_p": 1.5}, 422, "top_p"),
    ("/api/generate", {"prompt": "a", "top_k": -1}, 422, "top_k"),
    ("/api/generate", {"prompt": "a", "guidance_scale": -1}, 422, "guidance_scale"),
    ("/api/generate", {"prompt": "a", "min_p": 1}, 422, "min_p: Input should be less than 1"),
    ("/api/generate", {"prompt": "a", "seed": -1}, 422, "seed"),
    ("/api/generate", {"prompt": "a", "seed": 2**53}, 422, "seed"),
    ("/api/generate", {"prompt": "a", "candidates": 9}, 422, "candidates"),
    ("/api/generate", {"prompt": "a", "num_images": 16, "candidates": 8}, 422, "at most 64 per request"),
    ("/api/caption", {"image": "not base64!"}, 400, "image is not valid base64"),
    ("/api/caption", {"image": _raw(b"hello")}, 400, "image is not an image file"),
    ("/api/caption", {"image": _raw(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)}, 400, "image"),
    ("/api/caption", {"image": _png((5000, 5000), "1")}, 400, "5000x5000 pixels"),
    ("/api/caption", {"image": "data:image/png," + GOOD}, 400, "without ;base64"),
    ("/api/caption", {"image": GOOD, "language": "fr"}, 422, "language"),
    ("/api/caption", {"image": ""}, 422, "image"),
    ("/api/caption", {"image": GOOD, "candidates": 4, "num_captions": 2}, 422, "leave num_captions at 1"),
    ("/api/caption", {"image": GOOD, "candidates": 17}, 422, "candidates"),
    ("/api/score", {"images": [GOOD]}, 422, "give either prompt"),
    ("/api/score", {"prompt": "a", "prompts": ["b"], "images": [GOOD]}, 422, "give either prompt"),
    ("/api/score", {"prompt": "a", "images": []}, 422, "images"),
    ("/api/score", {"prompt": "a", "images": [GOOD] * 17}, 422, "images: List should have at most 16"),
    ("/api/score", {"prompts": ["a", ""], "images": [GOOD]}, 422, "prompts.1"),
    ("/api/score", {"prompt": " ", "images": [GOOD]}, 400, "empty text"),
    ("/api/score", {"prompt": "a", "images": [GOOD, "@@"]}, 400, "images[1] is not valid base64"),
    ("/api/upscale", {"image": _png((8, 8))}, 400, "smaller than one super-resolution window"),
    ("/api/upscale", {"image": _png((128, 128))}, 400, "at most 64 px a side"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD_INPUTS)
def test_bad_input_is_a_4xx_that_says_what_to_do(
    client: TestClient, path: str, body: dict, status: int, message: str
) -> None:
    reply = client.post(path, json=body)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]


def test_malformed_bodies_and_wrong_routes_are_4xx(client: TestClient) -> None:
    json_type = {"content-type": "application/json"}
    cases = [
        (client.post("/api/generate", content=b"{bad", headers=json_type), 422, "not valid JSON"),
        (client.post("/api/generate", content=b"[1, 2]", headers=json_type), 422, "JSON object"),
        (client.post("/api/generate"), 422, "JSON object in the request body"),
        (client.get("/api/generate"), 405, "use POST"),
        (client.get("/api/nothing"), 404, "GET /api/info"),
    ]
    for reply, status, message in cases:
        assert reply.status_code == status and message in reply.json()["error"], reply.text


def test_rgba_and_jpeg_inputs_are_converted_not_refused(
    client: TestClient, images: list[Image.Image]
) -> None:
    buf = io.BytesIO()
    images[0].convert("RGBA").save(buf, format="PNG")
    reply = client.post("/api/caption", json={"image": _raw(buf.getvalue()), "language": "zh"})
    assert reply.status_code == 200 and reply.json()["captions"][0]
    buf = io.BytesIO()
    images[0].save(buf, format="JPEG")
    assert client.post("/api/caption", json={"image": _raw(buf.getvalue())}).status_code == 200


def test_bodies_over_the_cap_are_413_before_they_are_read(tiny_pipe: CogViewPipeline) -> None:
    with TestClient(create_app(tiny_pipe, max_body_bytes=1000)) as small:
        json_type = {"content-type": "application/json"}
        reply = small.post("/api/generate", content=b"x" * 2000, headers=json_type)
        assert reply.status_code == 413 and "larger than 1000 bytes" in reply.json()["error"]

        def chunked():  # no Content-Length: counted as it arrives
            for _ in range(5):
                yield b"x" * 500

        reply = small.post("/api/generate", content=chunked(), headers=json_type)
        assert reply.status_code == 413
        ok = small.post("/api/generate", json={"prompt": "a", "num_images": 1, "candidates": 1})
        assert ok.status_code == 200


def test_undecodable_json_is_422_like_any_malformed_body(client: TestClient) -> None:
    json_type = {"content-type": "application/json"}
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"prompt": "\xff\xfe"}'):
        reply = client.post("/api/generate", content=body, headers=json_type)
        assert reply.status_code == 422 and "not valid JSON" in reply.json()["error"], reply.text


def test_hostile_images_and_text_are_400_at_once(client: TestClient) -> None:
    import struct
    import time
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    for width, height in ((16777216, 1), (4194304, 4)):
        header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
        bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
        started = time.perf_counter()
        reply = client.post("/api/caption", json={"image": _raw(bomb)})
        assert reply.status_code == 400 and "at most 4096" in reply.json()["error"]
        assert time.perf_counter() - started < 2
    reply = client.post("/api/generate", content=b'{"prompt": "\\ud800"}', headers={"content-type": "application/json"})
    assert reply.status_code in (400, 422) and reply.status_code != 500
