"""Fixtures of the GPU suite (marker `gpu`; the root conftest skips it without CUDA, or fails it with
CITYSEG_REQUIRE_GPU=1, which also makes any skip of a gpu test a failure).

Run on a GPU machine: `CITYSEG_REQUIRE_GPU=1 python -m pytest -m gpu tests/gpu -q` (benchmarks/gpu_session.py
runs it after the headline measurements, with a time limit per test and a progress log it resumes from).
The datasets are tiny and written once per session: 128x256 frames, JPEG with PNG or npy trainId
labels (the prepared layout), and PNG with raw labelIds (the Cityscapes layout).
"""

from __future__ import annotations

import pytest
import torch
from loader_fixtures import write_prepared, write_raw

HW = (128, 256)
SPLITS = {"train": 8, "val": 4}


@pytest.fixture(scope="session")
def cuda() -> torch.device:
    from cityseg_fast.hardware import resolve_device

    return resolve_device("cuda")


@pytest.fixture(scope="session")
def datasets(tmp_path_factory) -> dict:
    """{"png": prepared JPEG + PNG labels, "npy": prepared JPEG + npy labels, "raw": Cityscapes PNG layout}."""
    base = tmp_path_factory.mktemp("gpu-data")
    return {
        "png": write_prepared(base / "png", SPLITS, hw=HW, pattern="texture"),
        "npy": write_prepared(base / "npy", SPLITS, hw=HW, pattern="texture", label_format="npy"),
        "raw": write_raw(base / "raw", SPLITS, hw=HW, pattern="texture"),
    }
