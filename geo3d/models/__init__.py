"""Assembled backbones and the model registry."""

from geo3d.models.registry import (
    ARCHITECTURES,
    SHIPPED,
    ShippedModel,
    build_model,
    describe_shipped,
    load_model,
    register_architecture,
)

__all__ = [
    "ARCHITECTURES",
    "SHIPPED",
    "ShippedModel",
    "build_model",
    "describe_shipped",
    "load_model",
    "register_architecture",
]
