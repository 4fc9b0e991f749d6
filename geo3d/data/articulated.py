"""``Articulated``: the part-labelled ``Shapes`` with every part turned rigidly about its joint.

A stand-in for articulated bodies: part segmentation then faces piecewise
rigid motion, not one global pose. For each shape of ``geo3d.data.shapes``
(same builders, same classes and global part ids):

- the kinematic tree: part 0 of the class is the root; every later part hangs
  from the earlier part nearest to it (smallest point-to-point distance), so
  a lamp's shade hangs from its pole, which hangs from its base;
- the joint: the mean of the part's points within 0.02 (unit-sphere units) of
  that closest distance to the parent, i.e. where the two parts touch;
- the motion: a rotation by an angle uniform in ``[-max_angle, max_angle]``
  about a uniformly random axis through the joint, composed down the tree
  (forward kinematics: a child moves with its parent, then about its own joint).

The result is re-centred (a translation), not rescaled, so distances within a
part are exactly those of the rest shape; a part may stick out of the unit
sphere a little or cut into its parent. Single-part classes (box, sphere, ...)
are left as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from geo3d.data.build_cache import load_or_build
from geo3d.data.shapes import CLASS_NAMES, CLASSES, NUM_PARTS, PARTS, Shapes, make_shape

CACHE_VERSION = 1
_CONTACT = 0.02  # how far beyond the closest distance a point still counts as touching the parent


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues: the ``[3, 3]`` rotation by ``angle`` about the unit vector ``axis``."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def articulate(
    data: Data, rng: np.random.Generator, max_angle: float = math.pi / 4
) -> tuple[Data, torch.Tensor, torch.Tensor]:
    """Turn each part of one shape about its joint (see the module docstring).

    Args:
        data: a ``Shapes`` sample: ``pos [P, 3]``, ``normal [P, 3]``, ``y [1]``, ``part [P]``.
        rng: draws the axes and angles.
        max_angle: the largest joint angle, radians.

    Returns:
        the moved ``Data`` (same fields, labels unchanged), and the motion of every
        global part id: ``rot [NUM_PARTS, 3, 3]``, ``shift [NUM_PARTS, 3]`` (float64)
        with ``new_pos = rot[part] @ pos + shift[part]`` (identity for absent parts).
    """
    pos, part = data.pos.double().numpy(), data.part.numpy()
    rot = np.tile(np.eye(3), (NUM_PARTS, 1, 1))
    shift = np.zeros((NUM_PARTS, 3))
    ids = [p for p in PARTS[CLASS_NAMES[int(data.y)]] if (part == p).any()]
    for i, child in enumerate(ids[1:], start=1):
        pts = pos[part == child]
        gaps = [np.sqrt(((pts[:, None] - pos[part == p][None]) ** 2).sum(-1)).min(1) for p in ids[:i]]
        j = int(np.argmin([g.min() for g in gaps]))
        parent, gap = ids[j], gaps[j]
        joint = pts[gap <= gap.min() + _CONTACT].mean(0)
        axis = rng.normal(size=3)
        q = _axis_angle(axis / np.linalg.norm(axis), float(rng.uniform(-max_angle, max_angle)))
        # x -> R_parent (Q (x - joint) + joint) + t_parent
        rot[child] = rot[parent] @ q
        shift[child] = rot[parent] @ (joint - q @ joint) + shift[parent]
    new = np.einsum("nij,nj->ni", rot[part], pos) + shift[part]
    centre = new.mean(0)
    shift -= centre
    out = data.clone()
    out.pos = torch.tensor(new - centre, dtype=torch.float32)
    if getattr(data, "normal", None) is not None:
        out.normal = torch.tensor(
            np.einsum("nij,nj->ni", rot[part], data.normal.double().numpy()), dtype=torch.float32
        )
    return out, torch.from_numpy(rot), torch.from_numpy(shift)


class Articulated(Shapes):
    """``Shapes`` with each part rotated rigidly about its joint: ``per_class`` shapes of each of the 16 classes.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (independent seeds).
        per_class: instances per class.
        num_points: points per shape.
        seed: base seed; with the other arguments it names the cache file.
        max_angle: the largest joint angle, radians (default pi/4).
        transform: applied to each ``Data`` on access.
        cache_dir: default ``$GEO3D_CACHE/articulated`` or ``~/.cache/geo3d/articulated``; ``""`` disables caching.

    Items have the fields of ``Shapes``: ``pos [P, 3]``, ``normal [P, 3]`` float32,
    ``y [1]`` (class), ``part [P]`` (global part id, ``geo3d.data.shapes.PARTS``);
    indexing and length are Shapes'.
    """

    def __init__(
        self,
        split: str = "train",
        per_class: int = 100,
        num_points: int = 1024,
        seed: int = 0,
        max_angle: float = math.pi / 4,
        transform: Callable[[Data], Data] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"Articulated: split must be train, val or test, got {split!r}")
        self.split, self.transform = split, transform
        key = f"v{CACHE_VERSION}-{seed}-{split}-{per_class}-{num_points}-{max_angle!r}"

        def build() -> dict[str, torch.Tensor]:
            # a stream apart from Shapes' (the extra 1): the rest shapes differ from Shapes' own split
            rng = np.random.default_rng([seed, {"train": 0, "val": 1, "test": 2}[split], 1])
            labels = np.repeat(np.arange(len(CLASSES)), per_class)
            rng.shuffle(labels)
            shapes = [articulate(make_shape(int(lab), num_points, rng), rng, max_angle)[0] for lab in labels]
            return {k: torch.stack([s[k] for s in shapes]) for k in ("pos", "normal", "y", "part")}

        self.data = load_or_build("articulated", key, cache_dir, build)
