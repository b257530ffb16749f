"""Shared fixtures. Tests run on the CPU; GPU tests are marked `gpu` and skipped without CUDA."""

from __future__ import annotations

import os

import pytest

# Keep CPU tests predictable on small CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    on a shared 2-core runner, 2 spinning OpenMP threads made small model tests 3-50x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
