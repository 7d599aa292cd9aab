"""Skip a test whose requirement is missing, except in CI, where the same test must fail.

``.ci/run`` sets ``COGVIEW_CI=1``: everything CI can install (the server extra, FastAPI's
TestClient, the reference files under ../shared/reference, the browser) is then a requirement,
so a broken install fails the run loudly instead of skipping quietly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CI = os.environ.get("COGVIEW_CI") == "1"


def require_reference(path: Path) -> None:
    """Skip or fail (see :func:`skip_or_fail`) when a file under ../shared/reference is missing.

    CI checks out the project beside ``shared/``; a clone without any ``shared/`` folder next to
    it is another layout (a developer's copy elsewhere), where the reference tests only skip.
    """
    if path.is_file():
        return
    shared = next((p for p in path.parents if p.name == "shared"), None)
    reason = f"reference file not found at {path} (reference data folder absent)"
    if shared is not None and not shared.is_dir():
        pytest.skip(f"{reason}; no {shared} beside this checkout")
    skip_or_fail(reason)


def skip_or_fail(reason: str, *, module: bool = False) -> None:
    """``pytest.skip(reason)`` on a developer's machine; ``pytest.fail`` under ``COGVIEW_CI=1``."""
    if CI:
        pytest.fail(f"{reason}; COGVIEW_CI=1 requires this test to run", pytrace=False)
    pytest.skip(reason, allow_module_level=module)
