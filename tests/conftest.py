"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread for every test: the tensors are tiny, and on a busy 2-core machine
    OpenMP's spinning threads made small convolutions ~100x slower (MobileNetV3 forward at 32x32:
    2.1 s with 2 threads vs 0.012 s with 1). Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
