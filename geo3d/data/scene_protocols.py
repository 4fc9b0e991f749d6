"""Evaluation protocols for scenes (``geo3d.data.Rooms``): how test scenes are moved before a model sees them.

- ``canonical``: unchanged.
- ``scene_z``: the whole scene rotated about the vertical axis through its centre
  (the centre of the xy bounding box of ``pos``); box centres rotate, yaws grow by the angle.
- ``per_object_z``: every object rotated by its own angle about the vertical axis
  through its box centre (points and normals; box yaw += angle, centre fixed);
  background untouched. Rooms' placement keeps objects disjoint under this.
  With ``Rooms(occlusion=True)`` the seen side turns with each object (the
  motion stays exactly rigid per object, which is what the test needs).
- ``scene_so3``: the whole scene under a uniform random rotation about its
  3D bounding-box centre.

Boxes under ``scene_so3``: a gravity-aligned ``(cx, cy, cz, dx, dy, dz, yaw)`` box
cannot hold a tilted object box. We re-fit each box as the smallest yaw box
around the 8 corners of the rotated ground-truth box (its centre is then the
rotated centre, as the corners are symmetric about it). This keeps the boxes
amodal and independent of sampling and occlusion, as the canonical ones are,
and they contain every point of their object; they are looser than the object,
so ``scene_so3`` detection scores measure the task "find the upright box around
each tilted object". Of the four yaw-equivalent boxes, the one whose heading is
closest to the rotated box's projected x axis is kept, so a near-identity
rotation gives back nearly the original box.

Every protocol keeps the point order, the labels, the number of points and all
distances within each object; rotations are done in float64.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data

from geo3d.data.transforms import random_rotation

PROTOCOLS = ("canonical", "scene_z", "per_object_z", "scene_so3")


def _rot_z(angle: torch.Tensor) -> torch.Tensor:
    """``[..., 3, 3]`` rotations about +z by ``angle [...]`` (counter-clockwise)."""
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], -1).reshape(*angle.shape, 3, 3)


def _wrap(yaw: torch.Tensor) -> torch.Tensor:
    """Angles to ``[-pi, pi)``."""
    return torch.remainder(yaw + math.pi, 2 * math.pi) - math.pi


def box_corners(boxes: torch.Tensor) -> torch.Tensor:
    """``[M, 8, 3]`` corners of yaw boxes ``[M, 7]`` ``(cx, cy, cz, dx, dy, dz, yaw)``."""
    signs = torch.tensor(
        [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=boxes.dtype
    )
    local = signs[None] * boxes[:, None, 3:6] / 2  # [M, 8, 3]
    return local @ _rot_z(boxes[:, 6]).transpose(1, 2) + boxes[:, None, :3]


def fit_yaw_boxes(corners: torch.Tensor, heading: torch.Tensor) -> torch.Tensor:
    """Smallest-footprint yaw boxes ``[M, 7]`` around point sets ``[M, K, 3]``.

    The minimum-area rectangle has a side along an edge of the convex hull, so
    every direction between two of the K points is a candidate. Among the four
    equivalent boxes (yaw + k pi/2, dx/dy swapped for odd k) the yaw closest to
    ``heading [M]`` is returned.
    """
    xy = corners[..., :2]
    diff = xy[:, :, None] - xy[:, None]  # [M, K, K, 2]
    cand = torch.atan2(diff[..., 1], diff[..., 0]).flatten(1)  # [M, K*K]
    c, s = torch.cos(cand), torch.sin(cand)
    u = xy[:, None, :, 0] * c[..., None] + xy[:, None, :, 1] * s[..., None]  # [M, C, K] along the side
    v = -xy[:, None, :, 0] * s[..., None] + xy[:, None, :, 1] * c[..., None]
    du, dv = u.amax(-1) - u.amin(-1), v.amax(-1) - v.amin(-1)
    best = (du * dv).argmin(1, keepdim=True)
    yaw, du, dv = cand.gather(1, best)[:, 0], du.gather(1, best)[:, 0], dv.gather(1, best)[:, 0]
    mu = (u.amax(-1) + u.amin(-1)).gather(1, best)[:, 0] / 2
    mv = (v.amax(-1) + v.amin(-1)).gather(1, best)[:, 0] / 2
    cx, cy = mu * torch.cos(yaw) - mv * torch.sin(yaw), mu * torch.sin(yaw) + mv * torch.cos(yaw)
    k = torch.round(_wrap(heading - yaw) / (math.pi / 2))  # quarter turns towards the heading
    yaw = _wrap(yaw + k * math.pi / 2)
    odd = torch.remainder(k, 2) == 1
    dx, dy = torch.where(odd, dv, du), torch.where(odd, du, dv)
    z = corners[..., 2]
    cz, dz = (z.amax(1) + z.amin(1)) / 2, z.amax(1) - z.amin(1)
    return torch.stack([cx, cy, cz, dx, dy, dz, yaw], 1)


def apply_protocol(data: Data, protocol: str, generator: torch.Generator | None = None) -> Data:
    """Return a moved copy of a scene under ``protocol`` (one of ``PROTOCOLS``).

    Args:
        data: a scene with ``pos [N, 3]``, ``normal [N, 3]`` (optional), ``instance [N]``
            (-1 background, 0..M-1 objects) and ``boxes [M, 7]``; other fields are copied.
        protocol: ``canonical``, ``scene_z``, ``per_object_z`` or ``scene_so3``.
        generator: draws the angles / rotation (the global generator if None).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"apply_protocol: protocol must be one of {PROTOCOLS}, got {protocol!r}")
    out = data.clone()
    if protocol == "canonical":
        return out
    pos, boxes = data.pos.double(), data.boxes.double()
    normal = data.normal.double() if getattr(data, "normal", None) is not None else None
    if protocol == "per_object_z":
        m = boxes.shape[0]
        angle = torch.rand(m, generator=generator, dtype=torch.float64) * 2 * math.pi
        inst = data.instance
        rot = torch.cat([_rot_z(angle), torch.eye(3, dtype=torch.float64)[None]])[inst]  # -1: identity
        centre = torch.cat([boxes[:, :3], torch.zeros(1, 3, dtype=torch.float64)])[inst]
        pos = ((pos - centre)[:, None] @ rot.transpose(1, 2))[:, 0] + centre
        normal = (normal[:, None] @ rot.transpose(1, 2))[:, 0] if normal is not None else None
        boxes = torch.cat([boxes[:, :6], _wrap(boxes[:, 6:] + angle[:, None])], 1)
    else:
        lo, hi = pos.amin(0), pos.amax(0)
        centre = (lo + hi) / 2
        if protocol == "scene_z":
            angle = torch.rand((), generator=generator, dtype=torch.float64) * 2 * math.pi
            centre[2] = 0.0
            rot = _rot_z(angle)
        else:
            rot = random_rotation("so3", generator, torch.float64)
        pos = (pos - centre) @ rot.T + centre
        normal = normal @ rot.T if normal is not None else None
        if protocol == "scene_z":
            boxes = torch.cat(
                [(boxes[:, :3] - centre) @ rot.T + centre, boxes[:, 3:6], _wrap(boxes[:, 6:] + angle)], 1
            )
        else:
            corners = (box_corners(boxes) - centre) @ rot.T + centre
            x_axis = torch.stack(
                [torch.cos(boxes[:, 6]), torch.sin(boxes[:, 6]), torch.zeros_like(boxes[:, 6])], 1
            )
            x_axis = x_axis @ rot.T
            boxes = fit_yaw_boxes(corners, torch.atan2(x_axis[:, 1], x_axis[:, 0]))
    out.pos = pos.to(data.pos.dtype)
    if normal is not None:
        out.normal = normal.to(data.normal.dtype)
    out.boxes = boxes.to(data.boxes.dtype)
    return out


class ProtocolSplit(Dataset):
    """A fixed test split: scene ``k`` of ``dataset`` moved under ``protocol`` with a generator seeded by ``(seed, k)``.

    The same (dataset, protocol, seed) always gives the same scenes, so every
    model is evaluated on identical inputs.
    """

    def __init__(self, dataset: Dataset, protocol: str, seed: int = 0) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"ProtocolSplit: protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.dataset, self.protocol, self.seed = dataset, protocol, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, k: int) -> Data:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + PROTOCOLS.index(self.protocol) * 7919 + k)
        return apply_protocol(self.dataset[k], self.protocol, g)
