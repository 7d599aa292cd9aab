"""Server test fixtures: the tiny random model folder's pipeline and a TestClient on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cogview.pipeline import CogViewPipeline


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model_dir: Path) -> CogViewPipeline:
    return CogViewPipeline.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def client(tiny_pipe: CogViewPipeline, tiny_model_dir: Path) -> Iterator[Any]:
    """A TestClient on the tiny three-job model (the test modules skip without the [server] extra)."""
    from fastapi.testclient import TestClient

    from cogview.server import create_app

    with TestClient(create_app(tiny_pipe, model_name=str(tiny_model_dir))) as c:
        yield c
