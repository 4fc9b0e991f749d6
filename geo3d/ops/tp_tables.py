"""The layout of the tensor-product tables the kernels read: one place on the Python side.

``cuda_ext/tensor_product/tensor_product_core.h`` declares the same columns and
mode codes for C++ and CUDA (``tests/test_tensor_product.py`` checks that the two
agree). :mod:`geo3d.o3.tp_plan` fills the tables from e3nn-style instructions;
the ops here only read them.
"""

from __future__ import annotations

import functools

import torch
from e3nn import o3

# Columns of the int64 path table (one row per instruction).
MODE, L1, L2, L3, MUL1, MUL2, MUL_OUT, OFF1, OFF2, OFF_OUT, W_OFF, CG_START, CG_END = range(13)
NUM_PATH_FIELDS = 13
# The two contractions the kernels run (every other e3nn mode maps onto one of them).
MODE_CODE = {"uvw": 0, "uvu": 1}


@functools.cache
def dense_wigner_3j(l1: int, l2: int, l3: int) -> torch.Tensor:
    """e3nn's real Wigner 3j symbol ``[2l1+1, 2l2+1, 2l3+1]`` in float64 (cached)."""
    return o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
