"""Tiny synthetic prepared cases for the training tests (a sphere head with a skull shell)."""

from __future__ import annotations

import pytest
import torch

from _helpers import make_training_case as make_case
from clinfuse.preprocess.prepared import PreparedCase


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the test CPU is shared, and oversubscribed OpenMP threads are slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cases3d() -> list[PreparedCase]:
    return [make_case(f"c{i}", seed=i, lesion=i != 1) for i in range(3)]
