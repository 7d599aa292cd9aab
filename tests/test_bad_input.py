"""Bad input from a hostile review: each case is refused at once with a clear error, never runs
code, never reads outside its folder and never crashes (issue "bad input never runs code").

The server's side (body limit, image bombs over HTTP) is in tests/server/test_app.py; sharded
checkpoints in tests/training/test_dcp_reader.py; the converter in tests/convert/test_safe_load.py.
"""

from __future__ import annotations

import json
import math
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cogview.checks import check_seed, check_text, finite_float, positive_int
from cogview.cli import main
from cogview.datasets.folder import load_folder
from cogview.generation.sampling import SamplingConfig, process_logits, sample_from_uniform
from cogview.images import MAX_IMAGE_SIDE, open_image
from cogview.model import TransformerConfig
from cogview.pipeline import PIPELINE_NAME, CogViewPipeline
from cogview.serialization import CheckpointError


def png(width: int, height: int, rows: int | None = None) -> bytes:
    """A PNG whose header says ``width`` x ``height`` over ``rows`` rows of (grey) pixel data:
    kilobytes on disk whatever the size it claims."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = height if rows is None else rows
    raw = (b"\x00" + b"\x80" * width) * rows
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> CogViewPipeline:
    return CogViewPipeline.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def image(pipe: CogViewPipeline) -> Image.Image:
    return Image.new("RGB", (pipe.image_tokenizer.image_size,) * 2, (200, 30, 30))


def quick(fn, *args, **kwargs):
    started = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        assert time.perf_counter() - started < 5, "bad input must be refused at once"


# --- 2: images that claim a huge size -------------------------------------------------------------


@pytest.mark.parametrize("size", [(16777216, 1), (4194304, 4), (13000, 13000), (MAX_IMAGE_SIDE + 1, 64), (400, 10)])
def test_oversized_or_stretched_png_is_refused_before_decoding(size: tuple[int, int], tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png(*size, rows=1))
    assert path.stat().st_size < 100_000
    with pytest.raises(ValueError, match=r"at most 4096|longer than 16:1"):
        quick(open_image, path)
    assert quick(main, ["caption", str(path)]) == 2


def test_truncated_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    path.write_bytes(png(3000, 3000, rows=10))
    with pytest.raises(ValueError, match="could not be read"):
        quick(open_image, path)


def test_library_refuses_huge_pil_images(pipe: CogViewPipeline) -> None:
    wide = Image.new("RGB", (70000, 2))
    with pytest.raises(ValueError, match="at most 4096"):
        quick(pipe.caption, wide)
    with pytest.raises(ValueError, match="longer than 16:1"):
        quick(pipe.upscale, Image.new("RGB", (2000, 64)))
    with pytest.raises(ValueError, match="has no pixels"):
        quick(pipe.caption, Image.new("RGB", (0, 0)))


# --- 3: counts without a bound ---------------------------------------------------------------------


def test_counts_are_bounded_and_the_bound_is_configurable(pipe: CogViewPipeline, image: Image.Image) -> None:
    with pytest.raises(ValueError, match=r"more than the limit of 256 per call.*max_samples"):
        quick(pipe.generate, "a", num_images=10**9, candidates=1)
    with pytest.raises(ValueError, match="257 samples"):
        quick(pipe.generate, ["a"] * 257, num_images=1, candidates=1)
    with pytest.raises(ValueError, match="more than the limit"):
        quick(pipe.caption, image, num_captions=10**9)
    with pytest.raises(ValueError, match="candidates=65 is more than the limit of 64"):
        quick(pipe.generate, "a", candidates=65)
    pipe.max_samples = 300
    try:
        assert len(pipe.caption(image, num_captions=257, max_tokens=1)) == 257
    finally:
        pipe.max_samples = 256


# --- 4: extreme but in-range sampling values -----------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, 1e-38, 1e-7, 1e300])
def test_extreme_temperatures_sample_valid_ids(temperature: float) -> None:
    logits = torch.randn(4, 50)
    logits[:, 40:] = float("-inf")  # masked ids (e.g. not image codes)
    out = process_logits(logits, SamplingConfig(temperature=temperature, top_p=1e-300))
    ids = sample_from_uniform(out, torch.rand(4))
    assert (ids < 40).all()
    if temperature < 1e-6:
        assert torch.equal(ids, logits.argmax(-1))  # the vanishing-temperature limit: greedy


def test_extreme_settings_end_to_end(pipe: CogViewPipeline, image: Image.Image) -> None:
    for t in (1e-300, 1e300):
        assert quick(pipe.caption, image, temperature=t, top_p=1e-300, max_tokens=2)
        assert quick(pipe.generate, "a", temperature=t, seed=0, candidates=1)[0].size == image.size
    with pytest.raises(ValueError, match=r"guidance_scale must lie in \[0, 10000\]"):
        quick(pipe.generate, "a", guidance_scale=1e38, candidates=1)
    for name in ("temperature", "top_p", "guidance_scale", "min_p"):
        with pytest.raises(ValueError, match=f"{name} is too large for a float"):
            SamplingConfig(**{name: 10**400})


# --- 5, 6: folders for prepare --------------------------------------------------------------------


def test_folder_skips_bad_lines_and_paths_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "x.png")
    root = tmp_path / "data"
    root.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "good.png")
    (root / "link.png").symlink_to(outside / "x.png")
    (root / "bomb.png").write_bytes(png(13000, 13000, rows=10))
    lines = [
        json.dumps({"image": "good.png", "caption": "a red square"}).encode(),
        b'{"image": "good.png", "caption": "caf\xe9"}',  # Latin-1, not UTF-8
        json.dumps({"image": "../outside/x.png", "caption": "escape"}).encode(),
        json.dumps({"image": str(outside / "x.png"), "caption": "absolute"}).encode(),
        json.dumps({"image": "../../../../etc/passwd", "caption": "passwd"}).encode(),
        json.dumps({"image": "link.png", "caption": "symlink out"}).encode(),
        json.dumps({"image": "bomb.png", "caption": "a bomb"}).encode(),
    ]
    (root / "captions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    ds = quick(load_folder, root)
    assert [rel for rel, _ in ds.items] == ["good.png"]
    reasons = dict(ds.skipped)
    assert "not UTF-8 text (byte 0xe9" in reasons["captions.jsonl:2"]
    for rel in ("../outside/x.png", str(outside / "x.png"), "../../../../etc/passwd", "link.png"):
        assert "outside the dataset folder" in reasons[rel], rel
    assert "at most 4096" in reasons["bomb.png"]
    allowed = load_folder(root, allow_outside=True)
    assert {rel for rel, _ in allowed.items} == {"good.png", "../outside/x.png", str(outside / "x.png"), "link.png"}


# --- 8, 10: text and API types ---------------------------------------------------------------------


def test_lone_surrogates_are_a_value_error(pipe: CogViewPipeline, image: Image.Image) -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        quick(pipe.generate, "\ud800", candidates=1)
    with pytest.raises(ValueError, match="lone surrogate"):
        quick(pipe.score, "a\udfff", image)
    with pytest.raises(ValueError, match="lone surrogate"):
        quick(pipe.upscale, image, "\ud800")


def test_api_types(pipe: CogViewPipeline, image: Image.Image) -> None:
    with pytest.raises(ValueError, match="no images"):
        pipe.caption(torch.zeros(0, 3, 32, 32))
    with pytest.raises(TypeError, match="prompt must be a str"):
        pipe.upscale(image, prompt=5)
    for seed in (1.5, "1", b"1", True, torch.tensor(1), math.inf):
        with pytest.raises(TypeError, match="seed must be an int"):
            pipe.generate("a", seed=seed, candidates=1)
    with pytest.raises(ValueError, match=r"seed must lie in"):
        pipe.generate("a", seed=10**400, candidates=1)
    for bad in (float("nan"), float("inf"), -0.5, 1.5):
        pixels = torch.full((1, 3, 32, 32), 0.5)
        pixels[0, 0, 0, 0] = bad
        with pytest.raises(ValueError, match="NaN or infinite|pixels are floats in"):
            pipe.caption(pixels)
    with pytest.raises(ValueError, match="uint8"):
        pipe.caption(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_validators() -> None:
    assert positive_int("n", np.int64(3)) == 3
    assert check_seed(np.int32(5)) == 5
    with pytest.raises(TypeError, match="n must be a positive integer"):
        positive_int("n", 2.0)
    with pytest.raises(ValueError, match="x is too large for a float"):
        finite_float("x", 10**400)
    assert check_text("t", "ねこ") == "ねこ"


# --- 9: CLI messages, not tracebacks ------------------------------------------------------------


def test_cli_messages(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", str(tiny_model_dir)]
    image = tmp_path / "im.png"
    Image.new("RGB", (32, 32)).save(image)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png(4194304, 4, rows=1))
    existing = tmp_path / "file"
    existing.write_text("x")
    cases = {
        ("generate", "a", "--grid-scale", "1000000", *model): "--grid-scale=1000000 is more than the limit",
        ("generate", "a", "--device", "tpu9", *model): "unknown device 'tpu9'",
        ("generate", "a", "--device", "cuda:7", *model): "is not available",
        ("generate", "a", "--out", str(existing), *model): "is an existing file",
        ("generate", "a", "-n", "1000000000", *model): "more than the limit of 256",
        ("generate", "\udce9", *model): "lone surrogate",
        ("caption", str(bomb), *model): "at most 4096",
        ("score", "a", str(bomb), *model): "at most 4096",
        ("upscale", str(image), "--out", str(existing), *model): "is an existing file",
        ("caption", str(image), "-n", "100000", *model): "--max-samples",
    }
    for argv, message in cases.items():
        capsys.readouterr()
        assert quick(main, list(argv)) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert main(["caption", str(image), "--temperature", "1e-300", "--top-k", "5", *model]) == 0
    assert not list(tmp_path.glob("out*"))


# --- 11: model folders -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"jobs": {"text_to_image": "../../x"}}, "must name a folder inside the model folder"),
        ({"jobs": {"text_to_image": "/etc"}}, "must name a folder inside the model folder"),
        ({"jobs": "text_to_image"}, "must be a list of job names or a mapping"),
        ({"super_resolution": {"window": 0}}, "super_resolution.window must be a positive integer"),
    ],
)
def test_bad_pipeline_json_is_refused(tiny_model_dir: Path, tmp_path: Path, change: dict, message: str) -> None:
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    meta = json.loads((folder / PIPELINE_NAME).read_text())
    meta.update(change)
    (folder / PIPELINE_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        CogViewPipeline.from_pretrained(folder)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0, -1e-5])
def test_norm_eps_must_be_positive_and_finite(value: float) -> None:
    with pytest.raises(ValueError, match="norm_eps"):
        TransformerConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, max_seq_len=16, norm_eps=value)


# --- 13: a full disk -------------------------------------------------------------------------------


def test_a_full_disk_is_a_clear_error_and_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import shutil as shutil_module

    from safetensors import SafetensorError

    from cogview.serialization import DiskFullError, atomic_write, save_weights
    from cogview.training.checkpoint import checkpoint_dirs, save_checkpoint

    weights = tmp_path / "model.safetensors"
    save_weights(weights, {"w": torch.ones(4)})
    before = weights.read_bytes()

    def full(tmp: str) -> None:
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })")

    with pytest.raises(DiskFullError, match="no space left on the device to write .*model.safetensors"):
        atomic_write(weights, full)
    assert weights.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]

    out = tmp_path / "run"
    save = lambda folder: save_weights(folder / "model.safetensors", {"w": torch.ones(1000)})  # noqa: E731
    save_checkpoint(out, 1, save, {})
    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(DiskFullError, match="not enough free space .* pruned only after the new one is saved") as info:
        save_checkpoint(out, 2, save, {})
    assert info.value.errno == errno.ENOSPC
    assert [d.name for d in checkpoint_dirs(out)] == ["step_00000001"]
    assert not list((out / "checkpoints").glob(".tmp_*"))


def test_numpy_settings_are_plain_python_after_validation() -> None:
    settings = SamplingConfig(top_k=np.int64(5), temperature=np.float32(0.5))
    assert json.loads(json.dumps(settings.to_dict()))["top_k"] == 5
    assert type(settings.top_k) is int and type(settings.temperature) is float
