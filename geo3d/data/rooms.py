"""``Rooms``: procedural indoor scenes of furniture, with boxes and per-point semantic/instance labels.

A scene is a rectangular floor at ``z = 0`` (optionally four walls) and 4 to 12
objects from 8 furniture classes (``geo3d.data.room_layout.CLASS_NAMES``), each a union of boxes and
vertical cylinders with class-specific, realistic sizes in metres, standing on
the floor with a random yaw (or, with ``object_yaw="aligned"``, that yaw snapped to the
nearest multiple of 90 degrees: furniture square to the room, the canonical pose a model
trained without rotations learns and the ``per_object_z`` protocol then breaks).
Objects are placed so that their *circumscribed
footprint circles* (plus ``MARGIN``) are disjoint: no two objects overlap in the
top view even after any independent rotation about their own vertical axes
(the ``per_object_z`` protocol of ``geo3d.data.scene_protocols``).

Points are sampled uniformly by area over the *visible surface* of the union:
faces hidden inside another primitive of the same object (a leg under a table
top), object bottoms on the floor and the floor under objects are not sampled.
With ``occlusion=True`` only the points seen from one random viewpoint (inside
the room, 1.2-2.0 m high, outside every object) are kept: each point is
ray-cast against the analytic primitives of every object (exact, unlike a
z-buffer or hidden-point removal on the sampled points, which leak through
sparse surfaces). There is no field-of-view cut, like one panoramic scan. In
both cases the scene has exactly ``num_points`` points. Gaussian noise
(``noise`` metres, truncated at 3 sigma, added in the object's frame) is added
last; boxes are the noiseless, amodal extents, so an object's points lie in its
box up to ``3 * noise`` (and under occlusion may cover only part of it).

Each scene's layout is drawn from its own seed ``(seed, split, index)``, so the
same index gives the same room whatever ``num_points``, ``occlusion`` or
``walls``; a built split is cached (``$GEO3D_CACHE/rooms``, default ``~/.cache/geo3d/rooms``) like ``Shapes``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data

from geo3d.data.build_cache import load_or_build
from geo3d.data.room_layout import OBJECT_YAWS, RoomLayout, RoomObject, make_layout

CACHE_VERSION = 1
_EPS = 1e-7  # inclusive inside tests: coplanar contact faces count as hidden


# --- surface sampling ----------------------------------------------------------------------------------------


def _patches(scene: RoomLayout, walls: bool) -> dict[str, np.ndarray]:
    """Every surface piece: rectangles (box faces, floor, walls), discs (caps) and tubes (cylinder sides).

    Each row: owner object (-1 background), owner primitive, centre [3], two half
    edge vectors [3] (rect) or radius/half height, normal [3], area; object rows
    are in the object's local frame, background rows in the world frame.
    """
    rect, disc, tube = [], [], []
    for o, obj in enumerate(scene.objects):
        for j, (kind, c, h) in enumerate(zip(obj.kind, obj.centre, obj.half, strict=True)):
            on_floor = c[2] - h[2] < _EPS
            if kind == 1:
                tube.append([o, j, *c, h[0], h[2], 4 * math.pi * h[0] * h[2]])
                for s in (-1, 1):
                    if not (s < 0 and on_floor):
                        disc.append([o, j, c[0], c[1], c[2] + s * h[2], h[0], s, math.pi * h[0] ** 2])
                continue
            for a in range(3):
                b, e = (a + 1) % 3, (a + 2) % 3
                for s in (-1, 1):
                    if a == 2 and s < 0 and on_floor:
                        continue
                    f, u, v, n = c.copy(), np.zeros(3), np.zeros(3), np.zeros(3)
                    f[a] += s * h[a]
                    u[b], v[e], n[a] = h[b], h[e], s
                    rect.append([o, j, *f, *u, *v, *n, 4 * h[b] * h[e]])
    w, length = scene.room
    rect.append([-1, -1, 0, 0, 0, w / 2, 0, 0, 0, length / 2, 0, 0, 0, 1, w * length])
    if walls:
        hz = scene.wall_height / 2
        for a, half_room, other in ((0, w / 2, length / 2), (1, length / 2, w / 2)):
            for s in (-1, 1):
                f, u, v, n = np.zeros(3), np.zeros(3), np.array([0, 0, hz]), np.zeros(3)
                f[a], f[2], u[1 - a], n[a] = s * half_room, hz, other, -s  # normals face inwards
                rect.append([-1, -1, *f, *u, *v, *n, 4 * other * hz])
    return {
        k: np.array(v, dtype=np.float64).reshape(-1, dim)
        for k, v, dim in (("rect", rect, 15), ("disc", disc, 8), ("tube", tube, 8))
    }


def _sample_patches(patches, count: int, rng) -> tuple[np.ndarray, ...]:
    """``count`` points uniform by area: owner [n], prim [n], local position [n, 3], local normal [n, 3]."""
    areas = np.concatenate([patches[k][:, -1] for k in ("rect", "disc", "tube")])
    which = rng.choice(len(areas), size=count, p=areas / areas.sum())
    n_rect, n_disc = len(patches["rect"]), len(patches["disc"])
    owner, prim, pos, normal = [], [], [], []
    for kind, sel in (
        ("rect", which[which < n_rect]),
        ("disc", which[(which >= n_rect) & (which < n_rect + n_disc)] - n_rect),
        ("tube", which[which >= n_rect + n_disc] - n_rect - n_disc),
    ):
        row = patches[kind][sel]
        a, b = rng.random((2, len(sel), 1))
        if kind == "rect":
            p, nrm = row[:, 2:5] + (2 * a - 1) * row[:, 5:8] + (2 * b - 1) * row[:, 8:11], row[:, 11:14]
        elif kind == "disc":
            r, phi = row[:, 5:6] * np.sqrt(a), 2 * math.pi * b
            p = row[:, 2:5] + np.concatenate([r * np.cos(phi), r * np.sin(phi), 0 * r], 1)
            nrm = np.concatenate([0 * r, 0 * r, row[:, 6:7]], 1)
        else:
            phi, z = 2 * math.pi * a, (2 * b - 1) * row[:, 6:7]
            nrm = np.concatenate([np.cos(phi), np.sin(phi), 0 * z], 1)
            p = row[:, 2:5] + np.concatenate([row[:, 5:6] * nrm[:, :2], z], 1)
        owner.append(row[:, 0].astype(np.int64))
        prim.append(row[:, 1].astype(np.int64))
        pos.append(p)
        normal.append(nrm)
    return tuple(np.concatenate(x) for x in (owner, prim, pos, normal))


def _inside(p: np.ndarray, obj: RoomObject) -> np.ndarray:
    """``[n, P]``: point ``n`` lies in (or on) primitive ``P`` of ``obj`` (local frame)."""
    d = np.abs(p[:, None, :] - obj.centre[None])
    in_z = d[..., 2] <= obj.half[:, 2] + _EPS
    in_box = (d[..., 0] <= obj.half[:, 0] + _EPS) & (d[..., 1] <= obj.half[:, 1] + _EPS)
    in_cyl = d[..., 0] ** 2 + d[..., 1] ** 2 <= (obj.half[:, 0] + _EPS) ** 2
    return in_z & np.where(obj.kind == 1, in_cyl, in_box)


def _to_local(p: np.ndarray, scene: RoomLayout, o: int) -> np.ndarray:
    c, s = math.cos(scene.yaw[o]), math.sin(scene.yaw[o])
    q = p[..., :2] - scene.xy[o]
    return np.stack([c * q[..., 0] + s * q[..., 1], -s * q[..., 0] + c * q[..., 1], p[..., 2]], -1)


def _to_world(p: np.ndarray, owner: np.ndarray, scene: RoomLayout, translate: bool = True) -> np.ndarray:
    """Object-local rows (owner >= 0) to world; background rows (owner -1) are already world."""
    c = np.append(np.cos(scene.yaw), 1.0)[owner]  # index -1 picks the appended identity
    s = np.append(np.sin(scene.yaw), 0.0)[owner]
    t = np.vstack([scene.xy, [0.0, 0.0]])[owner] * translate
    x, y = c * p[:, 0] - s * p[:, 1] + t[:, 0], s * p[:, 0] + c * p[:, 1] + t[:, 1]
    return np.stack([x, y, p[:, 2]], 1)


def _hidden_inside(owner, prim, local, world, scene: RoomLayout) -> np.ndarray:
    """Points inside another primitive of their own object, or floor points under an object."""
    hidden = np.zeros(len(owner), dtype=bool)
    on_floor = np.flatnonzero((owner < 0) & (world[:, 2] < _EPS))
    for o, obj in enumerate(scene.objects):
        mine = np.flatnonzero(owner == o)
        inside = _inside(local[mine], obj) & (prim[mine, None] != np.arange(len(obj.kind)))
        hidden[mine] |= inside.any(1)
        floor = on_floor[np.linalg.norm(world[on_floor, :2] - scene.xy[o], axis=1) <= obj.radius + _EPS]
        hidden[floor] |= _inside(_to_local(world[floor], scene, o), obj).any(1)
    return hidden


def _occluded(world: np.ndarray, scene: RoomLayout) -> np.ndarray:
    """Points whose segment from the camera enters some primitive before reaching them (exact ray casting)."""
    occluded = np.zeros(len(world), dtype=bool)
    for o, obj in enumerate(scene.objects):
        cam, p = _to_local(scene.camera, scene, o), _to_local(world, scene, o)
        d = p - cam
        # only segments passing within the object's circle in the top view can hit it
        t = np.clip(-(cam[:2] * d[:, :2]).sum(1) / np.maximum((d[:, :2] ** 2).sum(1), 1e-18), 0, 1)
        near = np.flatnonzero(np.linalg.norm(cam[:2] + t[:, None] * d[:, :2], axis=1) <= obj.radius)
        d = d[near]
        dist = np.linalg.norm(d, axis=1)
        safe = np.where(np.abs(d) < 1e-12, 1e-12, d)
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (obj.centre[None] - obj.half[None] - cam) / safe[:, None]  # [n, P, 3]
            t2 = (obj.centre[None] + obj.half[None] - cam) / safe[:, None]
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            # vertical cylinder: solve |cam_xy + t d_xy - c_xy| = r
            a = (d[:, None, :2] ** 2).sum(-1)
            oc = cam[:2] - obj.centre[None, :, :2]
            b = 2 * (oc * d[:, None, :2]).sum(-1)
            c = (oc**2).sum(-1) - obj.half[None, :, 0] ** 2
            disc = b**2 - 4 * a * c
            root = np.sqrt(np.maximum(disc, 0))
            c0 = np.where(disc >= 0, (-b - root) / (2 * a), np.inf)
            c1 = np.where(disc >= 0, (-b + root) / (2 * a), -np.inf)
            vertical = a < 1e-18  # a vertical ray is inside the circle for all t, or never
            c0 = np.where(vertical, np.where(c <= 0, -np.inf, np.inf), c0)
            c1 = np.where(vertical, np.where(c <= 0, np.inf, -np.inf), c1)
        cyl = obj.kind[None] == 1
        t_in = np.where(cyl, np.maximum(c0, lo[..., 2]), lo.max(-1))
        t_out = np.where(cyl, np.minimum(c1, hi[..., 2]), hi.min(-1))
        hit = (t_in < t_out) & (t_out > 0) & (t_in < 1 - 1e-5 / dist[:, None])
        occluded[near] |= hit.any(1)
    return occluded


def sample_scene(
    scene: RoomLayout, num_points: int, rng: np.random.Generator, occlusion: bool, walls: bool, noise: float
) -> Data:
    """Sample ``num_points`` visible surface points of ``scene`` (see the module docstring for the fields)."""
    patches = _patches(scene, walls)
    keep: list[tuple[np.ndarray, ...]] = []
    have, rate = 0, 0.5 if occlusion else 0.9
    while have < num_points:
        count = int(1.2 * (num_points - have) / rate) + 64
        owner, prim, local, normal = _sample_patches(patches, count, rng)
        world = _to_world(local, owner, scene)
        ok = ~_hidden_inside(owner, prim, local, world, scene)
        if occlusion:
            ok[ok] = ~_occluded(world[ok], scene)
        rate = max(ok.mean(), 0.05)
        keep.append((owner[ok], local[ok], normal[ok]))
        have += int(ok.sum())
    owner, local, normal = (np.concatenate(x) for x in zip(*keep, strict=True))
    pick = rng.choice(len(owner), size=num_points, replace=False)
    owner, local, normal = owner[pick], local[pick], normal[pick]
    local = local + np.clip(rng.normal(0.0, noise, local.shape), -3 * noise, 3 * noise)
    pos = _to_world(local, owner, scene)
    normal = _to_world(normal, owner, scene, translate=False)
    size = np.array([o.size for o in scene.objects])
    boxes = np.concatenate([scene.xy, size[:, 2:] / 2, size, scene.yaw[:, None]], 1)
    return Data(
        pos=torch.tensor(pos, dtype=torch.float32),
        normal=torch.tensor(normal, dtype=torch.float32),
        semantic=torch.tensor(np.where(owner < 0, 0, scene.label[owner] + 1), dtype=torch.long),
        instance=torch.tensor(owner, dtype=torch.long),
        boxes=torch.tensor(boxes, dtype=torch.float32),
        box_class=torch.tensor(scene.label, dtype=torch.long),
        num_objects=torch.tensor([len(scene.objects)]),
    )


def make_scene(
    seed: int,
    split: str,
    index: int,
    num_points: int = 20000,
    occlusion: bool = False,
    walls: bool = False,
    noise: float = 0.003,
    object_yaw: str = "random",
) -> Data:
    """Scene ``index`` of ``split``: the layout from ``(seed, split, index, 0)``, the points from ``(..., 1)``."""
    split_id = _SPLITS[split]
    scene = make_layout(np.random.default_rng([seed, split_id, index, 0]), object_yaw)
    rng = np.random.default_rng([seed, split_id, index, 1])
    return sample_scene(scene, num_points, rng, occlusion, walls, noise)


_SPLITS = {"train": 0, "val": 1, "test": 2}


def scene_has_walls(seed: int, split: str, index: int, walls: bool | float) -> bool:
    """Whether scene ``index`` has walls: ``walls`` True / False, or a fraction of the scenes drawn per scene
    (from ``(seed, split, index, 2)``: a scene keeps its walls whatever the split's size)."""
    if isinstance(walls, bool):
        return walls
    return bool(np.random.default_rng([seed, _SPLITS[split], index, 2]).random() < walls)


_FIELDS = ("pos", "normal", "semantic", "instance")


def _build(
    seed: int,
    split: str,
    num_scenes: int,
    num_points: int,
    occlusion: bool,
    walls: bool,
    noise: float,
    object_yaw: str,
) -> dict[str, torch.Tensor]:
    """All scenes of a split as stacked tensors (boxes concatenated, ``box_ptr`` marks each scene's)."""
    scenes = [
        make_scene(
            seed, split, k, num_points, occlusion, scene_has_walls(seed, split, k, walls), noise, object_yaw
        )
        for k in range(num_scenes)
    ]
    counts = torch.tensor([int(s.num_objects) for s in scenes], dtype=torch.long)
    data = {k: torch.stack([s[k] for s in scenes]) if scenes else torch.empty(0) for k in _FIELDS}
    data["semantic"] = data["semantic"].to(torch.int8)  # 4x smaller cache; long on access
    data["instance"] = data["instance"].to(torch.int8)
    data["boxes"] = torch.cat([s.boxes for s in scenes]) if scenes else torch.empty(0, 7)
    data["box_class"] = torch.cat([s.box_class for s in scenes]) if scenes else torch.empty(0)
    data["box_ptr"] = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    return data


class Rooms(Dataset):
    """Procedural furniture scenes with ground-truth boxes and per-point labels (see the module docstring).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (independent seeds).
        num_scenes: scenes in the split.
        seed: base seed; with the other arguments it names the cache file.
        num_points: points per scene (default 20000).
        occlusion: keep only the points visible from one random viewpoint.
        walls: add the four walls (inner faces, 2.4-2.8 m) to the background. Off by
            default: walls take most of an area-weighted budget away from the objects.
            A number in (0, 1) gives that fraction of the scenes walls (drawn per scene:
            :func:`scene_has_walls`), so a detector learns rooms with and without them.
        noise: Gaussian noise in metres (truncated at 3 sigma); 0 gives exact surfaces.
        object_yaw: ``"random"`` (uniform yaws) or ``"aligned"`` (the same yaws snapped to
            multiples of 90 degrees; the same rooms otherwise).
        transform: applied to each ``Data`` on access.
        cache_dir: default ``$GEO3D_CACHE/rooms`` or ``~/.cache/geo3d/rooms``; ``""`` disables caching.

    Each item is a ``Data`` with N = ``num_points`` points and M objects:
    ``pos [N, 3]`` and ``normal [N, 3]`` float32 (metres, z up, floor at z = 0);
    ``semantic [N]`` long (0 floor/walls, k + 1 for class k); ``instance [N]`` long
    (-1 background, 0..M-1 objects); ``boxes [M, 7]`` float32 ``(cx, cy, cz, dx, dy,
    dz, yaw)``: centre, *full* extents along the object's local axes, and the
    counter-clockwise rotation about +z of its local x axis, in ``[-pi, pi)``;
    ``box_class [M]`` long in 0..7; ``num_objects [1]`` long. In a PyG ``Batch``
    ``boxes`` are concatenated and ``instance`` is *not* offset: add
    ``cumsum(num_objects)`` of the previous scenes to index the batch's boxes.
    """

    def __init__(
        self,
        split: str = "train",
        num_scenes: int = 100,
        seed: int = 0,
        num_points: int = 20000,
        occlusion: bool = False,
        walls: bool | float = False,
        noise: float = 0.003,
        object_yaw: str = "random",
        transform: Callable[[Data], Data] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"Rooms: split must be train, val or test, got {split!r}")
        if object_yaw not in OBJECT_YAWS:
            raise ValueError(f"Rooms: object_yaw must be one of {OBJECT_YAWS}, got {object_yaw!r}")
        if num_points < 1 or num_scenes < 0:
            raise ValueError(
                f"Rooms: need num_points >= 1 and num_scenes >= 0, got {num_points}, {num_scenes}"
            )
        if not isinstance(walls, bool) and not 0 <= walls <= 1:
            raise ValueError(f"Rooms: walls must be a bool or a fraction in [0, 1], got {walls!r}")
        if not isinstance(walls, bool) and walls in (0, 1):
            walls = bool(walls)  # 0 / 1 name the same cache as False / True
        self.split, self.transform = split, transform
        key = f"v{CACHE_VERSION}-{seed}-{split}-{num_scenes}-{num_points}-{occlusion}-{walls}-{noise}"
        if object_yaw != "random":  # the random-yaw caches keep their names
            key += f"-{object_yaw}"
        self.data = load_or_build(
            "rooms",
            key,
            cache_dir,
            lambda: _build(seed, split, num_scenes, num_points, occlusion, walls, noise, object_yaw),
        )

    def __len__(self) -> int:
        return len(self.data["box_ptr"]) - 1

    def __getitem__(self, k: int) -> Data:
        if not -len(self) <= k < len(self):
            raise IndexError(f"Rooms: index {k} out of range for {len(self)} scenes")
        k = k % len(self)
        a, b = int(self.data["box_ptr"][k]), int(self.data["box_ptr"][k + 1])
        d = Data(
            pos=self.data["pos"][k],
            normal=self.data["normal"][k],
            semantic=self.data["semantic"][k].long(),
            instance=self.data["instance"][k].long(),
            boxes=self.data["boxes"][a:b],
            box_class=self.data["box_class"][a:b].long(),
            num_objects=torch.tensor([b - a]),
        )
        return self.transform(d) if self.transform is not None else d
