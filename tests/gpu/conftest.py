"""The GPU tests' only fixture: the device they run on.

Run on a machine with a CUDA GPU: `pytest -m gpu --confcutdir=tests/gpu tests/gpu` (the
`confcutdir` keeps tests/conftest.py, which needs MLflow and Hydra, out: the GPU machine's image
may lack them). Without CUDA every test is skipped, unless RECOLAB_GPU_TESTS_ON_CPU=1 runs them on
the CPU (`benchmarks/gpu_check.sh --dry-run` does, to check the tests themselves).
"""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture
def dev() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("RECOLAB_GPU_TESTS_ON_CPU") == "1":
        return torch.device("cpu")
    pytest.skip("needs a CUDA GPU")
