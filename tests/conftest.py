"""Shared test set-up.

Triton kernels are checked on CPU through the interpreter; the variable must be set before any
kernel module imports triton, so it is set here, at collection time, when no GPU is present.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

try:
    import torch

    _has_cuda = torch.cuda.is_available()
except Exception:  # pragma: no cover - torch missing is reported by the imports themselves
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def real_data_root() -> Path | None:
    """``GEOATTN_TEST_DATA`` or ``../shared/data`` beside the project, when it exists."""
    env = os.environ.get("GEOATTN_TEST_DATA")
    root = Path(env) if env else _PROJECT_ROOT.parent / "shared" / "data"
    return root if root.is_dir() else None


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Root of the real-data fixtures; skips the test with a reason when they are absent."""
    root = real_data_root()
    if root is None:
        pytest.skip("real test data not found: set GEOATTN_TEST_DATA or place it at ../shared/data")
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    """Tests use small tensors, where intra-op threads cost more than they give (and on a busy machine
    their spinning slows small ops by orders of magnitude); examples and benchmarks keep torch's default."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
