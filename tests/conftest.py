import random

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state (numpy tests use their own seeded Generator)."""
    random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def single_thread():
    """Run the test on one intra-op thread (results that depend on the reduction order), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _private_data_cache(tmp_path_factory):
    """Data sets the tests build are cached in a temporary folder, never in the user's ~/.cache/geo3d."""
    patch = pytest.MonkeyPatch()
    patch.setenv("GEO3D_CACHE", str(tmp_path_factory.mktemp("geo3d-cache")))
    yield
    patch.undo()


@pytest.fixture
def sim():
    """geo3d's CUDA simulator (geo3d._cudasim) on its default device, restored after the test."""
    from geo3d.ops import _native

    mod = _native.cudasim()
    mod.configure()
    yield mod
    mod.configure()
