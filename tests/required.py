"""Skip a test whose requirement is missing, except in CI, where the same test must fail.

``.ci/run`` sets ``COGVIEW_CI=1``: everything CI can install (the server extra, FastAPI's
TestClient, the reference files under ../shared/reference, the browser) is then a requirement,
so a broken install fails the run loudly instead of skipping quietly.
"""

from __future__ import annotations

import os

import pytest

CI = os.environ.get("COGVIEW_CI") == "1"


def skip_or_fail(reason: str, *, module: bool = False) -> None:
    """``pytest.skip(reason)`` on a developer's machine; ``pytest.fail`` under ``COGVIEW_CI=1``."""
    if CI:
        pytest.fail(f"{reason}; COGVIEW_CI=1 requires this test to run", pytrace=False)
    pytest.skip(reason, allow_module_level=module)
