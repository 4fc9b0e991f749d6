"""Layers: equivariant tensor products (on geo3d's kernels) and the backbones' blocks."""

from geo3d.nn.tensor_product import (
    ChannelWiseTensorProduct,
    ChannelWiseTensorProductConv,
    FullyConnectedTensorProduct,
    TensorProduct,
    TensorProductConv,
)

__all__ = [
    "ChannelWiseTensorProduct",
    "ChannelWiseTensorProductConv",
    "FullyConnectedTensorProduct",
    "TensorProduct",
    "TensorProductConv",
]
