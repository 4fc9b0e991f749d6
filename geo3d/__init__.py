"""geo3d: E(3)-equivariant and rotation-invariant networks for 3D point clouds and molecules.

The names below load on first use, so ``import geo3d.ops`` (or any lower layer)
does not pull in the model registry and every architecture with it.
"""

from __future__ import annotations

import importlib
from typing import Any

from geo3d.version import __version__

_EXPORTS = {
    "CheckpointError": "geo3d.checkpoint",
    "load_checkpoint": "geo3d.checkpoint",
    "save_checkpoint": "geo3d.checkpoint",
    "load_model": "geo3d.registry",
    "radius_graph": "geo3d.ops",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'geo3d' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
