"""Shared test settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # The test machines share 2 cores; OpenMP threads waiting on each other there make tiny ops
    # up to 50x slower. Results do not depend on the thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
