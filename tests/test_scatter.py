"""scatter against explicit loops, and against torch_scatter where it happens to be installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from geo3d.ops import scatter


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_scatter_matches_loops(reduce, strided):
    # strided: a column slice of a wider tensor (the EQGAT attention logits), which scatter
    # copies before scatter_reduce; mean goes through index_add_ and counts.
    src = (
        torch.randn(50, 8, dtype=torch.float64)[:, ::2]
        if strided
        else torch.randn(50, 4, dtype=torch.float64)
    )
    index = torch.randint(0, 7, (50,))
    index[index == 3] = 2  # slot 3 stays empty: it must come out as 0
    out = scatter(src, index, dim=0, dim_size=9, reduce=reduce)
    assert out.shape == (9, 4)
    for k in range(9):
        rows = src[index == k]
        if len(rows) == 0:
            expected = torch.zeros(4, dtype=torch.float64)
        else:
            expected = {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.amax(0), "min": rows.amin(0)}[
                reduce
            ]
        assert torch.allclose(out[k], expected), (reduce, k)


def test_scatter_along_other_dims_and_errors():
    src = torch.randn(3, 10)
    index = torch.tensor([0, 1, 1, 2, 2, 2, 0, 0, 1, 3])
    out = scatter(src, index, dim=1)
    assert out.shape == (3, 4)
    assert torch.allclose(out[:, 2], src[:, 3:6].sum(1))
    with pytest.raises(ValueError, match="unknown reduce"):
        scatter(src, index, dim=1, reduce="prod")
    with pytest.raises(ValueError, match="index must be 1-D"):
        scatter(src, index[:5], dim=1)


@pytest.mark.skipif(importlib.util.find_spec("torch_scatter") is None, reason="torch_scatter not installed")
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_same_results_as_torch_scatter(reduce):
    import torch_scatter

    src = torch.randn(200, 8)
    index = torch.randint(0, 20, (200,))
    ours = scatter(src, index, dim=0, dim_size=20, reduce=reduce)
    theirs = torch_scatter.scatter(src, index, dim=0, dim_size=20, reduce=reduce)
    assert torch.equal(ours, theirs)
