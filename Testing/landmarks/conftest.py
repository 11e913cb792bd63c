"""Shared fixtures of the landmark tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small network passes on one thread: on a busy 2-core CI machine OpenMP spinning makes them far slower.

    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``; without torch it does nothing.
    """
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
