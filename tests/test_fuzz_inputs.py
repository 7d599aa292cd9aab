"""A bounded, seeded fuzz of the public API and the CLI with hostile values.

Each case calls one job with a few parameters replaced by values from pools of empty, huge,
control-character, surrogate, wrongly typed and extreme inputs. The contract: a correct result,
or a ValueError/TypeError with a message, in a few seconds; never another exception. Run as a
script (``python tests/test_fuzz_inputs.py MODEL_DIR``) it prints the failures it finds, which is
how the counts before and after the fixes were taken.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

SECONDS = 5.0


def _images(size: int) -> list[Any]:
    good = Image.new("RGB", (size, size), (10, 200, 30))
    nan = torch.full((1, 3, size, size), 0.5)
    nan[0, 1, 2, 3] = float("nan")
    return [
        good,
        [good, good],
        Image.new("RGBA", (size, size)),
        Image.new("L", (size + 5, size)),
        Image.new("RGB", (0, 0)),
        Image.new("RGB", (1, 1)),
        Image.new("RGB", (5000, 2)),
        torch.rand(2, 3, size, size),
        torch.zeros(0, 3, size, size),
        nan,
        torch.full((1, 3, size, size), -1.0),
        torch.rand(3, size, size),
        torch.zeros(1, 3, size, size, dtype=torch.uint8),
        [],
        [good, 5],
        "image.png",
        5,
        None,
    ]


TEXTS = ["a", "", "   ", "x" * 5000, "\x00\x01\x1b[31m", "\ud800", "a\udfffb", "猫" * 300, "🍕 披萨", "\u202eabc",
         5, None, b"a", ["a"], 1.5]
PROMPTS = TEXTS + [["a", "b"], [], ["a", 5], ["\udcff"], ("a",)]
COUNTS = [0, -1, 1, 2, 10**9, 10**400, 1.5, "1", True, None, float("nan"), np.int64(2), -(10**30)]
FLOATS = [0, -1, 1e-300, 1e-40, 1e300, float("nan"), float("inf"), float("-inf"), 10**400, "1", True, 0.5, 1, 2, None]
SEEDS = [None, 0, -1, 2**70, 1.5, "1", b"1", True, torch.tensor(1), np.int64(3), math.inf, 10**400]
LANGUAGES = ["zh", "en", "fr", "", None, 5, ["zh"]]


def _case(rng: random.Random, size: int) -> tuple[str, dict[str, Any]]:
    """One job and its keyword arguments, a few of them hostile."""
    images = _images(size)
    job = rng.choice(["generate", "caption", "score", "upscale"])
    base: dict[str, Any] = {
        "generate": {"prompt": "a", "num_images": 1, "candidates": 1, "seed": 0},
        "caption": {"images": images[0], "language": "en", "num_captions": 1, "max_tokens": 3, "seed": 0},
        "score": {"prompt": "a", "images": images[0]},
        "upscale": {"image": images[0], "prompt": None, "seed": 0},
    }[job]
    pools: dict[str, list[Any]] = {
        "generate": {"prompt": PROMPTS, "num_images": COUNTS, "candidates": COUNTS, "seed": SEEDS,
                     "temperature": FLOATS, "top_k": COUNTS, "top_p": FLOATS, "guidance_scale": FLOATS,
                     "min_p": FLOATS, "max_batch_size": COUNTS},
        "caption": {"images": images, "language": LANGUAGES, "num_captions": COUNTS, "seed": SEEDS,
                    "temperature": FLOATS, "top_k": COUNTS, "top_p": FLOATS, "max_tokens": COUNTS,
                    "max_batch_size": COUNTS},
        "score": {"prompt": TEXTS, "images": images, "max_batch_size": COUNTS},
        "upscale": {"image": images, "prompt": TEXTS, "seed": SEEDS, "temperature": FLOATS, "top_k": COUNTS},
    }[job]
    kwargs = dict(base)
    for name in rng.sample(sorted(pools), k=min(len(pools), rng.choice([1, 1, 2, 3]))):
        kwargs[name] = rng.choice(pools[name])
    return job, kwargs


def _call(pipe: Any, job: str, kwargs: dict[str, Any]) -> Any:
    kwargs = dict(kwargs)
    if job == "generate":
        return pipe.generate(kwargs.pop("prompt"), **kwargs)
    if job == "caption":
        return pipe.caption(kwargs.pop("images"), **kwargs)
    if job == "score":
        return pipe.score(kwargs.pop("prompt"), kwargs.pop("images"), **kwargs)
    return pipe.upscale(kwargs.pop("image"), kwargs.pop("prompt"), **kwargs)


class _Stuck(BaseException):
    """Raised by the alarm of a script run: a case that would otherwise run for minutes."""


def _stuck(signum: int, frame: Any) -> None:
    raise _Stuck


def run_api_cases(pipe: Any, n: int, seed: int = 0, alarm: int = 0) -> list[str]:
    """Failures (one line each) among ``n`` seeded cases; ``alarm`` seconds cut a case short."""
    rng, size, failures = random.Random(seed), pipe.image_tokenizer.image_size, []
    for i in range(n):
        job, kwargs = _case(rng, size)
        started = time.perf_counter()
        try:
            if alarm:
                signal.signal(signal.SIGALRM, _stuck)
                signal.alarm(alarm)
            _call(pipe, job, kwargs)
            outcome = None
        except _Stuck:
            outcome = f"still running after {alarm}s"
        except (ValueError, TypeError) as e:
            outcome = None if str(e).strip() else f"{type(e).__name__} without a message"
        except Exception as e:  # noqa: BLE001 - the point: no other exception may escape
            outcome = f"{type(e).__name__}: {str(e)[:120]}"
        finally:
            signal.alarm(0)
        took = time.perf_counter() - started
        if outcome is None and took > SECONDS:
            outcome = f"took {took:.1f}s"
        if outcome is not None:
            shown = {k: (v if not isinstance(v, (Image.Image, torch.Tensor, list)) else type(v).__name__)
                     for k, v in kwargs.items()}
            failures.append(f"case {i} {job}({shown!r:.200}): {outcome}")
    return failures


def cli_cases(model: Path, tmp: Path, seed: int = 0, n: int = 40) -> list[list[str]]:
    rng = random.Random(seed)
    good = tmp / "good.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(good)
    (tmp / "file").write_text("x")
    values = ["0", "-1", "1e-300", "1e300", "nan", "inf", "1000000000", "abc", "", "\udce9", "1" * 400]
    flags = {
        "generate": ["--num-images", "--seed", "--temperature", "--top-k", "--top-p", "--guidance-scale",
                     "--min-p", "--candidates", "--grid-scale", "--max-batch-size", "--device", "--out"],
        "caption": ["--num-captions", "--seed", "--temperature", "--top-k", "--top-p", "--language", "--device"],
        "score": ["--max-batch-size", "--device"],
        "upscale": ["--seed", "--temperature", "--top-k", "--out", "--device"],
    }
    cases = []
    for _ in range(n):
        job = rng.choice(sorted(flags))
        argv = [job, "--model", str(model)]
        if job == "generate":
            argv.append(rng.choice(["a", "", "\udce9", "x" * 3000, "猫"]))
            argv += ["-n", "1", "--candidates", "1", "--no-progress", "--out", str(tmp / "out")]
        elif job == "score":
            argv += [rng.choice(["a", "\udce9", ""]), str(good)]
        else:
            argv.append(rng.choice([str(good), str(tmp / "missing.png"), str(tmp / "file"), str(tmp)]))
            if job == "upscale":
                argv += ["--out", str(tmp / "up")]
        for flag in rng.sample(flags[job], k=rng.choice([1, 2])):
            if flag == "--out":  # never a relative path: the fuzz must not write where it runs
                value = rng.choice([str(tmp / "file"), str(tmp / "new" / "out"), str(tmp / "\udce9")])
            else:
                value = rng.choice(values + (["tpu9", "cuda:3", "cpu"] if flag == "--device" else []))
            argv += [flag, value]
        cases.append(argv)
    return cases


def run_cli_cases(model: Path, tmp: Path, n: int = 40, alarm: int = 0) -> list[str]:
    from cogview.cli import main

    failures = []
    for argv in cli_cases(model, tmp, n=n):
        err = io.StringIO()
        started = time.perf_counter()
        try:
            if alarm:
                signal.signal(signal.SIGALRM, _stuck)
                signal.alarm(alarm)
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
        except _Stuck:
            code = f"still running after {alarm}s"
        except SystemExit as e:  # argparse: a usage message and exit status 2
            code = e.code
        except Exception as e:  # noqa: BLE001
            code = f"{type(e).__name__}: {str(e)[:100]}"
        finally:
            signal.alarm(0)
        took = time.perf_counter() - started
        if code not in (0, 2) or "Traceback" in err.getvalue() or took > 3 * SECONDS:
            failures.append(f"{argv[0]} {argv[3:]!r:.200}: {code} in {took:.1f}s")
    return failures


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path) -> Any:
    from cogview.pipeline import CogViewPipeline

    return CogViewPipeline.from_pretrained(tiny_model_dir)


def test_api_fuzz(pipe: Any) -> None:
    failures = run_api_cases(pipe, n=300)
    assert not failures, "\n".join(failures)


def test_cli_fuzz(tiny_model_dir: Path, tmp_path: Path) -> None:
    failures = run_cli_cases(tiny_model_dir, tmp_path, n=40)
    assert not failures, "\n".join(failures)


if __name__ == "__main__":  # python tests/test_fuzz_inputs.py MODEL_DIR [N]
    import resource
    import tempfile

    from cogview.pipeline import CogViewPipeline

    model, n = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 300
    torch.set_num_threads(1)
    # Code without the bounds would try to allocate without end: cap memory and time per case.
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    api = run_api_cases(CogViewPipeline.from_pretrained(model), n, alarm=20)
    with tempfile.TemporaryDirectory() as tmp:
        cli = run_cli_cases(model, Path(tmp), alarm=20)
    print("\n".join(api + cli))
    print(f"API: {len(api)} of {n} cases failed; CLI: {len(cli)} of 40 cases failed")
