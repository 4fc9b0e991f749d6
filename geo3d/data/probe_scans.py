"""Probe scans: indoor scans made *without* the Rooms generator, to test a detector on scenes it has not seen.

A user's scan differs from the training scenes of :mod:`geo3d.data.rooms` in
ways a detector must tolerate: other furniture shapes, another floor density,
many more points than the model's ``num_points``, walls or none. This module
builds such scans from its own shape catalogue (``SHAPES``: a plain crate, a
desk on two slab legs, a wardrobe, a three-legged stool, an L-shaped sofa, a
bench), each a union of boxes and vertical cylinders whose visible surface
(faces inside another primitive of the object and bottoms excluded) is sampled
uniformly by area with a fixed number of points per object, the floor with its
own count, so objects are much denser than the floor (as in a scan whose points
come from a mesh sampler rather than a scanner). Each object has the class of
the Rooms class it plays (``SHAPES[name]``), so detection metrics can be taken
against the Rooms detectors' classes.

Objects are placed with disjoint circumscribed footprint circles (0.15 m apart
and from the walls), each with a random yaw about z; boxes are the noiseless
amodal extents in the object's frame, ``(cx, cy, cz, dx, dy, dz, yaw)``.
Everything is drawn from ``numpy.random.default_rng(seed)``, so a seed gives the
same scan on any machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from geo3d.data.room_layout import CLASS_NAMES

# Probe shape -> the Rooms class it plays (an index into CLASS_NAMES).
SHAPES: dict[str, int] = {
    "crate": CLASS_NAMES.index("cabinet"),
    "desk": CLASS_NAMES.index("table"),
    "wardrobe": CLASS_NAMES.index("cabinet"),
    "stool": CLASS_NAMES.index("chair"),
    "l_sofa": CLASS_NAMES.index("sofa"),
    "bench": CLASS_NAMES.index("sofa"),
}
GAP = 0.15  # metres between the objects' circumscribed circles, and to the walls
WALL_HEIGHT = 2.4

Prim = tuple[int, tuple[float, float, float], tuple[float, float, float]]  # kind (0 box, 1 cyl), centre, half


def _box(x: float, y: float, z0: float, dx: float, dy: float, dz: float) -> Prim:
    return (0, (x, y, z0 + dz / 2), (dx / 2, dy / 2, dz / 2))


def _cyl(x: float, y: float, z0: float, r: float, h: float) -> Prim:
    return (1, (x, y, z0 + h / 2), (r, r, h / 2))


def _crate(u: Callable[[float, float], float]) -> list[Prim]:
    return [_box(0, 0, 0, u(0.5, 1.1), u(0.4, 0.8), u(0.5, 1.0))]


def _desk(u: Callable[[float, float], float]) -> list[Prim]:
    w, d, h, t, leg = u(1.0, 1.6), u(0.55, 0.8), u(0.72, 0.76), u(0.03, 0.05), u(0.03, 0.05)
    return [
        _box(0, 0, h - t, w, d, t),
        _box(-(w - leg) / 2 + 0.02, 0, 0, leg, d - 0.04, h - t),  # slab legs, set in 2 cm
        _box((w - leg) / 2 - 0.02, 0, 0, leg, d - 0.04, h - t),
    ]


def _wardrobe(u: Callable[[float, float], float]) -> list[Prim]:
    w, d, h = u(0.9, 1.6), u(0.55, 0.65), u(1.8, 2.1)
    return [_box(0, 0, 0.1, w, d, h - 0.1), _box(0, -0.02, 0, w - 0.06, d - 0.06, 0.1)]


def _stool(u: Callable[[float, float], float]) -> list[Prim]:
    r, h, t = u(0.17, 0.22), u(0.45, 0.65), u(0.03, 0.05)
    prims = [_cyl(0, 0, h - t, r, t)]
    for k in range(3):
        a = 2 * math.pi * k / 3
        prims.append(_cyl(0.7 * r * math.cos(a), 0.7 * r * math.sin(a), 0, 0.018, h - t))
    return prims


def _l_sofa(u: Callable[[float, float], float]) -> list[Prim]:
    w, d, arm, sh, bh, bt = u(1.8, 2.4), u(0.85, 1.0), u(1.4, 1.8), u(0.4, 0.45), u(0.8, 0.9), 0.2
    return [
        _box(0, 0, 0, w, d, sh),  # seat
        _box(0, (d - bt) / 2, 0, w, bt, bh),  # back
        _box(-(w - d) / 2, -(arm - d) / 2, 0, d, arm - d, sh),  # chaise: the L's short leg
    ]


def _bench(u: Callable[[float, float], float]) -> list[Prim]:
    w, d, h = u(1.2, 1.8), u(0.35, 0.45), u(0.42, 0.48)
    return [_box(0, 0, h - 0.05, w, d, 0.05), _box(0, 0, 0, 0.08, d - 0.1, h - 0.05)]


_BUILDERS: dict[str, Callable[[Callable[[float, float], float]], list[Prim]]] = {
    "crate": _crate,
    "desk": _desk,
    "wardrobe": _wardrobe,
    "stool": _stool,
    "l_sofa": _l_sofa,
    "bench": _bench,
}


@dataclass
class ProbeScan:
    """A probe scan and its truth.

    Attributes:
        pos: ``[N, 3]`` float32 points (floor, walls, objects), shuffled.
        boxes: ``[M, 7]`` float32 amodal boxes ``(cx, cy, cz, dx, dy, dz, yaw)``.
        labels: ``[M]`` int64 Rooms classes (see ``SHAPES``).
        shapes: ``M`` probe shape names.
        instance: ``[N]`` int64 object index of each point (-1: floor or wall).
    """

    pos: Tensor
    boxes: Tensor
    labels: Tensor
    shapes: list[str]
    instance: Tensor

    def data(self) -> Data:
        """The scan as the PyG ``Data`` that :func:`geo3d.data.scan_files.read_point_cloud` returns."""
        return Data(pos=self.pos.clone())


def _surface(prims: list[Prim], count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` points uniform by area on the visible surface of a union of primitives (local frame)."""
    faces = []  # (area, sampler)
    for kind, c, h in prims:
        cx, cy, cz = c
        hx, _, hz = h
        if kind == 0:
            for axis, sign in ((0, 1), (0, -1), (1, 1), (1, -1), (2, 1)):  # no bottom face
                others = [a for a in range(3) if a != axis]
                area = 4 * h[others[0]] * h[others[1]]

                def sample(n, axis=axis, sign=sign, others=others, c=c, h=h):
                    p = np.empty((n, 3))
                    p[:, axis] = c[axis] + sign * h[axis]
                    for a in others:
                        p[:, a] = c[a] + rng.uniform(-h[a], h[a], n)
                    return p

                faces.append((area, sample))
        else:

            def side(n, cx=cx, cy=cy, cz=cz, r=hx, hz=hz):
                a = rng.uniform(0, 2 * math.pi, n)
                return np.stack([cx + r * np.cos(a), cy + r * np.sin(a), cz + rng.uniform(-hz, hz, n)], 1)

            def top(n, cx=cx, cy=cy, cz=cz, r=hx, hz=hz):
                a, rho = rng.uniform(0, 2 * math.pi, n), r * np.sqrt(rng.uniform(0, 1, n))
                return np.stack([cx + rho * np.cos(a), cy + rho * np.sin(a), np.full(n, cz + hz)], 1)

            faces += [(2 * math.pi * hx * 2 * hz, side), (math.pi * hx * hx, top)]
    area = np.array([f[0] for f in faces])
    out: list[np.ndarray] = []
    have = 0
    while have < count:
        n = 2 * (count - have) + 16
        which = rng.choice(len(faces), n, p=area / area.sum())
        pts = np.concatenate([faces[k][1](int((which == k).sum())) for k in range(len(faces))])
        hidden = np.zeros(len(pts), dtype=bool)
        for kind, c, h in prims:  # strictly inside another primitive: not visible
            d = pts - np.array(c)
            if kind == 0:
                hidden |= (np.abs(d) < np.array(h) - 1e-6).all(1)
            else:
                hidden |= (d[:, 0] ** 2 + d[:, 1] ** 2 < (h[0] - 1e-6) ** 2) & (np.abs(d[:, 2]) < h[2] - 1e-6)
        pts = pts[~hidden & (pts[:, 2] > 1e-6)]  # faces resting on the floor are not seen either
        out.append(pts[rng.permutation(len(pts))][: count - have])
        have += len(out[-1])
    return np.concatenate(out)


def _extent(prims: list[Prim]) -> tuple[np.ndarray, np.ndarray]:
    lo = np.min([np.array(c) - np.array(h) for _, c, h in prims], 0)
    hi = np.max([np.array(c) + np.array(h) for _, c, h in prims], 0)
    return lo, hi


def _place(radius: list[float], w: float, length: float, rng: np.random.Generator) -> list[np.ndarray] | None:
    """Centres with disjoint circles (``GAP`` apart, inside the floor), largest first; None after 200 layouts."""
    if any(min(w, length) <= 2 * (r + GAP) for r in radius):
        return None
    order = np.argsort(radius)[::-1]
    for _ in range(200):
        centres: dict[int, np.ndarray] = {}
        for k in order:
            r = radius[k]
            for _ in range(100):
                c = rng.uniform([r + GAP, r + GAP], [w - r - GAP, length - r - GAP])
                if all(np.linalg.norm(c - c2) > r + radius[j] + GAP for j, c2 in centres.items()):
                    centres[int(k)] = c
                    break
            else:
                break
        if len(centres) == len(radius):
            return [centres[k] for k in range(len(radius))]
    return None


def make_probe_scan(
    seed: int,
    num_objects: int = 4,
    floor_size: tuple[float, float] = (6.0, 6.0),
    floor_points: int = 8000,
    object_points: int = 5000,
    walls: bool = False,
    wall_points: int = 6000,
    noise: float = 0.003,
    shapes: tuple[str, ...] = tuple(SHAPES),
) -> ProbeScan:
    """A probe scan: a floor ``floor_size`` metres (corner at the origin), ``num_objects`` objects.

    Args:
        seed: the scan's random seed (layout, shapes, points).
        num_objects: objects on the floor, drawn from ``shapes``.
        floor_points, object_points, wall_points: points on the floor, on each
            object, on the four walls together (``walls``).
        noise: Gaussian noise (metres) added to every coordinate.

    Raises:
        ValueError: an unknown shape, or the objects do not fit on the floor in 500 tries.
    """
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        raise ValueError(f"unknown probe shapes {unknown} (known: {sorted(SHAPES)})")
    rng = np.random.default_rng(seed)

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    w, length = floor_size
    names = [shapes[int(k)] for k in rng.integers(len(shapes), size=num_objects)]
    prims = [_BUILDERS[name](u) for name in names]
    radius = [float(np.linalg.norm(np.maximum(np.abs(lo), np.abs(hi))[:2])) for lo, hi in map(_extent, prims)]
    centres = _place(radius, w, length, rng)
    if centres is None:
        raise ValueError(f"probe scan {seed}: {num_objects} objects do not fit on a {w} x {length} m floor")
    pts, inst, boxes = [], [], []
    for k, (prim, c) in enumerate(zip(prims, centres, strict=True)):
        yaw = u(0, 2 * math.pi)
        lo, hi = _extent(prim)
        local = _surface(prim, object_points, rng)
        cos, sin = math.cos(yaw), math.sin(yaw)
        rot = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]])
        mid = (lo + hi) / 2
        pts.append(local @ rot.T + np.array([c[0], c[1], 0.0]))
        inst.append(np.full(object_points, k))
        box_c = rot @ mid + np.array([c[0], c[1], 0.0])
        boxes.append([*box_c, *(hi - lo), yaw])
    floor = np.stack(
        [rng.uniform(0, w, floor_points), rng.uniform(0, length, floor_points), np.zeros(floor_points)], 1
    )
    pts.append(floor)
    inst.append(np.full(floor_points, -1))
    if walls:
        perim = rng.uniform(0, 2 * (w + length), wall_points)
        x = np.where(
            perim < w,
            perim,
            np.where(perim < w + length, w, np.where(perim < 2 * w + length, 2 * w + length - perim, 0.0)),
        )
        y = np.where(
            perim < w,
            0.0,
            np.where(
                perim < w + length,
                perim - w,
                np.where(perim < 2 * w + length, length, 2 * (w + length) - perim),
            ),
        )
        pts.append(np.stack([x, y, rng.uniform(0, WALL_HEIGHT, wall_points)], 1))
        inst.append(np.full(wall_points, -1))
    pos = np.concatenate(pts)
    pos = pos + rng.normal(0, noise, pos.shape) if noise > 0 else pos
    order = rng.permutation(len(pos))
    return ProbeScan(
        pos=torch.from_numpy(pos[order]).float(),
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 7),
        labels=torch.tensor([SHAPES[n] for n in names], dtype=torch.long),
        shapes=names,
        instance=torch.from_numpy(np.concatenate(inst)[order]).long(),
    )


# The probe set of `geo3d detect`'s tests and benchmarks/detect_probe_scans.py: three scans of 3 to 6
# objects unlike the training scenes (issue 21's scan: 6 x 6 m, 8,000 floor points, 5,000 per object;
# a denser floor; walls and more objects).
PROBE_SET: dict[str, dict] = {
    "issue-21": {"seed": 11, "num_objects": 4},
    "dense-floor": {
        "seed": 12,
        "num_objects": 3,
        "floor_size": (5.0, 7.0),
        "floor_points": 20000,
        "object_points": 3000,
    },
    "walls": {
        "seed": 13,
        "num_objects": 6,
        "floor_size": (8.0, 7.0),
        "floor_points": 10000,
        "object_points": 2000,
        "walls": True,
    },
}

# Twelve further probe scans (seeds 100-111) for choosing between detector settings without tuning on
# PROBE_SET: 3 to 6 objects, 1,000 to 5,000 points per object, 4 of them with walls.
FURTHER_SCANS: dict[str, dict] = {
    f"further-{100 + i}": {
        "seed": 100 + i,
        "num_objects": 3 + i % 4,
        "floor_size": (6.0 + i % 3, 6.0 + (i // 3) % 2),
        "object_points": (1000, 2000, 3500, 5000)[(i // 4 + i) % 4],
        "walls": i % 3 == 2,
    }
    for i in range(12)
}
