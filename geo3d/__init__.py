"""geo3d: E(3)-equivariant and rotation-invariant networks for 3D point clouds and molecules."""

from geo3d.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from geo3d.models.registry import load_model
from geo3d.ops import radius_graph
from geo3d.version import __version__

__all__ = [
    "CheckpointError",
    "__version__",
    "load_checkpoint",
    "load_model",
    "radius_graph",
    "save_checkpoint",
]
