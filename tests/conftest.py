import random

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state (numpy tests use their own seeded Generator)."""
    random.seed(0)
    torch.manual_seed(0)
    yield
