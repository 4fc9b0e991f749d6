"""The furniture and the floor plans of ``Rooms`` (:mod:`geo3d.data.rooms` samples their surfaces).

Each class is a union of boxes and vertical cylinders with realistic sizes in metres
(:func:`make_object`); :func:`make_layout` places 4 to 12 of them on a rectangular floor
with disjoint circumscribed footprint circles (plus ``MARGIN``), so that no two overlap in
the top view after any rotation about their own vertical axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CLASS_NAMES = ("table", "chair", "bed", "sofa", "cabinet", "bookshelf", "lamp", "bathtub")
NUM_CLASSES = len(CLASS_NAMES)
MARGIN = 0.1  # metres between circumscribed circles, and between a circle and the walls


# --- objects: boxes (kind 0, half extents) and vertical cylinders (kind 1, half = (r, r, h/2)) -------------


class _Prims(list):
    def box(self, x: float, y: float, z0: float, dx: float, dy: float, dz: float) -> None:
        self.append((0, (x, y, z0 + dz / 2), (dx / 2, dy / 2, dz / 2)))

    def cyl(self, x: float, y: float, z0: float, r: float, h: float) -> None:
        self.append((1, (x, y, z0 + h / 2), (r, r, h / 2)))


def _table(u, p: _Prims) -> None:
    h, t = u(0.70, 0.78), u(0.03, 0.05)
    if u(0, 1) < 0.3:  # round pedestal table
        p.cyl(0, 0, h - t, u(0.4, 0.6), t)
        p.cyl(0, 0, 0.03, u(0.03, 0.05), h - t - 0.03)
        p.cyl(0, 0, 0, u(0.2, 0.28), 0.03)
        return
    w = u(0.8, 1.8)
    d, r, inset = u(0.6, min(1.0, w)), u(0.02, 0.035), u(0.05, 0.1)
    p.box(0, 0, h - t, w, d, t)
    for sx in (-1, 1):
        for sy in (-1, 1):
            p.cyl(sx * (w / 2 - inset), sy * (d / 2 - inset), 0, r, h - t)


def _chair(u, p: _Prims) -> None:
    w, d, h, t, s = u(0.4, 0.55), u(0.4, 0.55), u(0.42, 0.48), u(0.03, 0.06), u(0.025, 0.04)
    p.box(0, 0, h - t, w, d, t)
    for sx in (-1, 1):
        for sy in (-1, 1):
            p.box(sx * (w - s) / 2, sy * (d - s) / 2, 0, s, s, h - t)
    bt = u(0.02, 0.05)
    p.box(0, (d - bt) / 2, h, w, bt, u(0.35, 0.5))


def _bed(u, p: _Prims) -> None:
    w, length, fh, mh = u(0.9, 1.9), u(1.95, 2.2), u(0.2, 0.3), u(0.18, 0.25)
    ht = u(0.04, 0.08)
    p.box(0, 0, 0, w, length, fh)
    p.box(0, -ht / 2, fh, w - 0.04, length - ht - 0.06, mh)
    p.box(0, (length - ht) / 2, 0, w, ht, u(0.9, 1.2))
    pillows = 1 if w < 1.3 else 2
    for k in range(pillows):
        x = 0.0 if pillows == 1 else (k - 0.5) * w / 2
        p.box(x, length / 2 - ht - 0.25, fh + mh, min(0.6, w / pillows - 0.1), 0.35, 0.12)


def _sofa(u, p: _Prims) -> None:
    w, d, sh = u(1.5, 2.4), u(0.8, 1.0), u(0.38, 0.45)
    bt, bh, aw, ah = u(0.15, 0.25), u(0.75, 0.95), u(0.12, 0.22), u(0.55, 0.65)
    p.box(0, 0, 0, w, d, sh)
    p.box(0, (d - bt) / 2, 0, w, bt, bh)
    for sx in (-1, 1):
        p.box(sx * (w - aw) / 2, -bt / 2, 0, aw, d - bt, ah)


def _cabinet(u, p: _Prims) -> None:
    w, d, h = u(0.4, 1.2), u(0.35, 0.6), u(0.7, 1.2)
    p.box(0, 0.02, 0, w - 0.04, d - 0.04, 0.08)  # recessed plinth
    p.box(0, 0, 0.08, w, d, h - 0.1)
    p.box(0, 0, h - 0.02, w + 0.02, d + 0.02, 0.02)  # overhanging top


def _bookshelf(u, p: _Prims) -> None:
    w, d, h, t = u(0.6, 1.2), u(0.25, 0.4), u(1.4, 2.1), u(0.018, 0.025)
    for sx in (-1, 1):
        p.box(sx * (w - t) / 2, 0, 0, t, d, h)
    p.box(0, (d - 0.006) / 2, 0, w - 2 * t, 0.006, h)  # back panel
    shelves = int(u(2, 6))
    for k in range(shelves + 2):  # bottom, shelves, top
        z = 0.05 + k * (h - 0.05 - t) / (shelves + 1)
        p.box(0, -0.003, z, w - 2 * t, d - 0.006, t)
    p.box(0, -(d - t) / 2, 0, w - 2 * t, t, 0.05)  # kick plate


def _lamp(u, p: _Prims) -> None:
    pole, shade_h = u(1.3, 1.7), u(0.2, 0.3)
    p.cyl(0, 0, 0, u(0.12, 0.2), 0.03)
    p.cyl(0, 0, 0.03, u(0.012, 0.02), pole)
    p.cyl(0, 0, 0.03 + pole - shade_h / 2, u(0.15, 0.25), shade_h)


def _bathtub(u, p: _Prims) -> None:
    length, w, h, t = u(1.5, 1.8), u(0.7, 0.85), u(0.5, 0.6), u(0.06, 0.1)
    p.box(0, 0, 0, length, w, t)
    for sy in (-1, 1):
        p.box(0, sy * (w - t) / 2, 0, length, t, h)
    for sx in (-1, 1):
        p.box(sx * (length - t) / 2, 0, 0, t, w - 2 * t, h)


_BUILDERS = (_table, _chair, _bed, _sofa, _cabinet, _bookshelf, _lamp, _bathtub)


@dataclass
class RoomObject:
    kind: np.ndarray  # [P] 0 box, 1 cylinder
    centre: np.ndarray  # [P, 3] local frame, footprint centred on the origin, standing on z = 0
    half: np.ndarray  # [P, 3]
    size: np.ndarray  # [3] full extents (dx, dy, dz) of the union

    @property
    def radius(self) -> float:
        """Radius of the circumscribed circle of the footprint (any yaw stays inside it)."""
        return 0.5 * math.hypot(self.size[0], self.size[1])


def make_object(label: int, rng: np.random.Generator) -> RoomObject:
    """One object of class ``label`` in its local frame, its footprint's bounding box centred on the origin."""
    prims = _Prims()
    _BUILDERS[label](lambda lo, hi: float(rng.uniform(lo, hi)), prims)
    kind = np.array([k for k, _, _ in prims])
    centre = np.array([c for _, c, _ in prims], dtype=np.float64)
    half = np.array([h for _, _, h in prims], dtype=np.float64)
    lo, hi = (centre - half).min(0), (centre + half).max(0)
    centre[:, :2] -= (lo[:2] + hi[:2]) / 2
    return RoomObject(kind, centre, half, hi - lo)


# --- layout --------------------------------------------------------------------------------------------------


@dataclass
class RoomLayout:
    room: tuple[float, float]  # floor extents (W, L), centred on the origin
    wall_height: float
    label: np.ndarray  # [M]
    objects: list[RoomObject]
    xy: np.ndarray  # [M, 2] object centres
    yaw: np.ndarray  # [M] in [-pi, pi)
    camera: np.ndarray  # [3] viewpoint for occlusion


OBJECT_YAWS = ("random", "aligned")


def make_layout(rng: np.random.Generator, object_yaw: str = "random") -> RoomLayout:
    """Draw a scene: 4-12 objects, a room sized to hold them, non-overlapping placement, a viewpoint.

    ``object_yaw="aligned"`` snaps each drawn yaw to the nearest multiple of pi/2; the
    random stream is the same, so the room, objects and placement are those of ``"random"``.
    """
    m = int(rng.integers(4, 13))
    label = rng.integers(0, NUM_CLASSES, m)
    objects = [make_object(int(k), rng) for k in label]
    yaw = rng.uniform(-math.pi, math.pi, m)
    if object_yaw == "aligned":
        yaw = np.remainder(np.round(yaw / (math.pi / 2)) * (math.pi / 2) + math.pi, 2 * math.pi) - math.pi
    radius = np.array([o.radius for o in objects])
    area = max(12.0, 2.2 * float(np.sum(np.pi * (radius + MARGIN) ** 2)))
    aspect = rng.uniform(1.0, 1.6)
    order = np.argsort(-radius, kind="stable")  # big objects first: rejection placement rarely fails
    while True:
        w = max(math.sqrt(area * aspect), 2 * (radius.max() + 2 * MARGIN))
        length = max(area / w, 2 * (radius.max() + 2 * MARGIN))
        xy = _place(radius, order, w, length, rng)
        if xy is not None:
            break
        area *= 1.15
    while True:  # a viewpoint in the room, outside every object's circle
        cam = rng.uniform([-w / 2 + 0.3, -length / 2 + 0.3], [w / 2 - 0.3, length / 2 - 0.3])
        if np.all(np.linalg.norm(xy - cam, axis=1) > radius + MARGIN):
            break
    camera = np.array([cam[0], cam[1], rng.uniform(1.2, 2.0)])
    return RoomLayout((w, length), float(rng.uniform(2.4, 2.8)), label, objects, xy, yaw, camera)


def _place(radius, order, w, length, rng, tries: int = 200) -> np.ndarray | None:
    xy = np.zeros((len(radius), 2))
    placed: list[int] = []
    for i in order:
        lim = np.array([w / 2, length / 2]) - radius[i] - MARGIN
        for _ in range(tries):
            p = rng.uniform(-lim, lim)
            d = np.linalg.norm(xy[placed] - p, axis=1)
            if np.all(d >= radius[placed] + radius[i] + MARGIN):
                xy[i] = p
                placed.append(int(i))
                break
        else:
            return None
    return xy
