"""Fixtures shared by the module tests."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: two threads on a loaded 2-core machine were many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
