"""Torch-facing ops of geo3d's core, with backend dispatch (see ``geo3d.ops._native``)."""

from geo3d.ops._native import backend_status, select_backend
from geo3d.ops.radius_graph import canonical_order, radius_graph
from geo3d.ops.scatter import scatter
from geo3d.ops.tensor_product import tensor_product, tensor_product_conv

__all__ = [
    "backend_status",
    "canonical_order",
    "radius_graph",
    "scatter",
    "select_backend",
    "tensor_product",
    "tensor_product_conv",
]
