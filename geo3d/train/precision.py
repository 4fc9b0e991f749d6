"""Training precision: float32, or bfloat16 autocast for the matrix products.

``train.precision: bfloat16`` runs the forward pass under
``torch.autocast(device_type, dtype=torch.bfloat16)``: linear layers and matrix
products take bf16 operands (on Intel CPUs with AMX they run on the tile unit,
~3x float32 on the EQGAT edge-MLP shape), while parameters, optimizer state,
gradients, the loss and anything autocast keeps in float32 (softmax, cross
entropy, norms) stay float32. Models decide themselves where a quantity must
stay float32 (EQGAT keeps positions float32: a bf16 output added to a float32
coordinate promotes to float32).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["float32", "bfloat16"]


def autocast_context(precision: Precision, device_type: str = "cpu") -> contextlib.AbstractContextManager:
    """Context for the forward pass and loss of one step (a no-op for float32)."""
    if precision == "float32":
        return contextlib.nullcontext()
    if precision == "bfloat16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    raise ValueError(f"train.precision must be 'float32' or 'bfloat16', got {precision!r}")
