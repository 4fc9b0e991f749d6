"""``Shapes``: a procedural, offline point-cloud set of 16 part-labelled object classes.

Every object is a composition of trimesh primitives (boxes, cylinders, spheres,
cones, capsules, tori) with random proportions, sampled on its surface by area
with face normals; each point carries the id of the primitive group it came
from (its part). Part ids are global and grouped per class, as in
ShapeNetPart (``PARTS[name]`` lists a class's part ids). Deterministic from the
seed: instance ``k`` of a split always looks the same, and the whole split is
cached after the first build (``~/.cache/geo3d/shapes``).

Classes are chosen so that simple statistics do not separate them: several
share primitives and proportions (mug/bottle/cylinder, lamp/mushroom,
snowman/dumbbell/capsule), and sizes are normalised away.
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

# (class name, part names); part ids are assigned in this order.
CLASSES: list[tuple[str, list[str]]] = [
    ("box", ["box"]),
    ("sphere", ["sphere"]),
    ("cylinder", ["cylinder"]),
    ("cone", ["cone"]),
    ("capsule", ["capsule"]),
    ("torus", ["torus"]),
    ("table", ["top", "legs"]),
    ("chair", ["seat", "legs", "back"]),
    ("mug", ["body", "handle"]),
    ("lamp", ["base", "pole", "shade"]),
    ("bottle", ["body", "neck", "cap"]),
    ("airplane", ["fuselage", "wings", "tail"]),
    ("dumbbell", ["bar", "weights"]),
    ("snowman", ["bottom", "middle", "head"]),
    ("rocket", ["body", "nose", "fins"]),
    ("mushroom", ["stem", "cap"]),
]
CLASS_NAMES = [name for name, _ in CLASSES]
PARTS: dict[str, list[int]] = {}
_next = 0
for _name, _parts in CLASSES:
    PARTS[_name] = list(range(_next, _next + len(_parts)))
    _next += len(_parts)
NUM_PARTS = _next
CACHE_VERSION = 1


def _mesh_builders():
    import trimesh
    from trimesh import creation

    def at(mesh, x=0.0, y=0.0, z=0.0):
        mesh.apply_translation([x, y, z])
        return mesh

    def rot(mesh, axis, angle):
        mesh.apply_transform(trimesh.transformations.rotation_matrix(angle, axis))
        return mesh

    def u(rng, lo, hi):
        return float(rng.uniform(lo, hi))

    def box(rng):
        return [[creation.box((u(rng, 0.5, 1.5), u(rng, 0.5, 1.5), u(rng, 0.5, 1.5)))]]

    def sphere(rng):
        m = creation.icosphere(subdivisions=3, radius=1.0)
        m.apply_scale([u(rng, 0.8, 1.2), u(rng, 0.8, 1.2), u(rng, 0.8, 1.2)])
        return [[m]]

    def cylinder(rng):
        return [[creation.cylinder(u(rng, 0.3, 0.7), u(rng, 1.0, 2.5), sections=32)]]

    def cone(rng):
        return [[creation.cone(u(rng, 0.4, 0.9), u(rng, 0.8, 2.0), sections=32)]]

    def capsule(rng):
        return [[creation.capsule(height=u(rng, 0.5, 2.0), radius=u(rng, 0.3, 0.6))]]

    def torus(rng):
        return [[creation.torus(u(rng, 0.7, 1.0), u(rng, 0.15, 0.4))]]

    def table(rng):
        w, d, h, t = u(rng, 1.2, 2.0), u(rng, 0.8, 1.4), u(rng, 0.8, 1.2), u(rng, 0.05, 0.15)
        r = u(rng, 0.04, 0.1)
        legs = [
            at(creation.cylinder(r, h, sections=12), sx * (w / 2 - 2 * r), sy * (d / 2 - 2 * r), h / 2)
            for sx in (-1, 1)
            for sy in (-1, 1)
        ]
        return [[at(creation.box((w, d, t)), z=h + t / 2)], legs]

    def chair(rng):
        w, h, t, back = u(rng, 0.8, 1.1), u(rng, 0.8, 1.1), u(rng, 0.05, 0.12), u(rng, 0.7, 1.2)
        r = u(rng, 0.03, 0.07)
        legs = [
            at(creation.cylinder(r, h, sections=12), sx * (w / 2 - 2 * r), sy * (w / 2 - 2 * r), h / 2)
            for sx in (-1, 1)
            for sy in (-1, 1)
        ]
        return [
            [at(creation.box((w, w, t)), z=h + t / 2)],
            legs,
            [at(creation.box((w, t, back)), y=w / 2 - t / 2, z=h + t + back / 2)],
        ]

    def mug(rng):
        r, h = u(rng, 0.4, 0.6), u(rng, 0.9, 1.4)
        handle = rot(creation.torus(u(rng, 0.25, 0.35), u(rng, 0.04, 0.08)), [1, 0, 0], math.pi / 2)
        return [[creation.cylinder(r, h, sections=32)], [at(handle, x=r + 0.2)]]

    def lamp(rng):
        base_h, pole_h = u(rng, 0.05, 0.15), u(rng, 1.0, 2.0)
        shade = creation.cone(u(rng, 0.4, 0.7), u(rng, 0.4, 0.7), sections=32)
        return [
            [creation.cylinder(u(rng, 0.3, 0.5), base_h, sections=32)],
            [at(creation.cylinder(u(rng, 0.03, 0.06), pole_h, sections=12), z=pole_h / 2)],
            [at(shade, z=pole_h - 0.1)],
        ]

    def bottle(rng):
        r, h = u(rng, 0.3, 0.5), u(rng, 1.0, 1.6)
        nr, nh = u(rng, 0.1, 0.18), u(rng, 0.3, 0.6)
        return [
            [creation.cylinder(r, h, sections=32)],
            [at(creation.cylinder(nr, nh, sections=24), z=h / 2 + nh / 2)],
            [at(creation.cylinder(nr * 1.3, 0.1, sections=24), z=h / 2 + nh + 0.05)],
        ]

    def airplane(rng):
        length, span = u(rng, 2.0, 3.0), u(rng, 2.0, 3.5)
        body = rot(creation.capsule(height=length, radius=u(rng, 0.15, 0.25)), [0, 1, 0], math.pi / 2)
        wing = creation.box((u(rng, 0.4, 0.7), span, 0.05))
        tail = at(creation.box((0.3, u(rng, 0.6, 1.0), 0.04)), x=-length / 2)
        fin = at(creation.box((0.3, 0.04, u(rng, 0.3, 0.6))), x=-length / 2, z=0.25)
        return [[body], [wing], [tail, fin]]

    def dumbbell(rng):
        length, r = u(rng, 1.0, 2.0), u(rng, 0.25, 0.45)
        bar = rot(creation.cylinder(u(rng, 0.05, 0.1), length, sections=16), [0, 1, 0], math.pi / 2)
        weights = [at(creation.icosphere(2, r), x=s * length / 2) for s in (-1, 1)]
        return [[bar], weights]

    def snowman(rng):
        r1, r2, r3 = u(rng, 0.5, 0.7), u(rng, 0.35, 0.5), u(rng, 0.2, 0.35)
        return [
            [creation.icosphere(2, r1)],
            [at(creation.icosphere(2, r2), z=r1 + r2 * 0.8)],
            [at(creation.icosphere(2, r3), z=r1 + 1.6 * r2 + r3 * 0.8)],
        ]

    def rocket(rng):
        r, h = u(rng, 0.2, 0.35), u(rng, 1.5, 2.5)
        fins = [
            rot(at(creation.box((0.03, 0.4, 0.4)), y=r + 0.15, z=-h / 2 + 0.2), [0, 0, 1], k * math.pi / 2)
            for k in range(4)
        ]
        return [
            [creation.cylinder(r, h, sections=32)],
            [at(creation.cone(r, u(rng, 0.4, 0.8), sections=32), z=h / 2)],
            fins,
        ]

    def mushroom(rng):
        stem_h = u(rng, 0.6, 1.2)
        cap = creation.icosphere(3, u(rng, 0.5, 0.8))
        cap.apply_scale([1, 1, u(rng, 0.4, 0.7)])
        return [[creation.cylinder(u(rng, 0.1, 0.25), stem_h, sections=24)], [at(cap, z=stem_h / 2)]]

    builders = [box, sphere, cylinder, cone, capsule, torus, table, chair, mug, lamp, bottle, airplane]
    builders += [dumbbell, snowman, rocket, mushroom]
    return builders


def make_shape(label: int, num_points: int, rng: np.random.Generator) -> Data:
    """One instance of class ``label``: ``pos [P, 3]``, ``normal [P, 3]``, ``y [1]``, ``part [P]``.

    Points are sampled by area over all the class's primitives; the cloud is
    centred and scaled into the unit sphere.
    """
    import trimesh

    groups = _mesh_builders()[label](rng)
    meshes, part_of_face = [], []
    for part, group in zip(PARTS[CLASS_NAMES[label]], groups, strict=True):
        for mesh in group:
            meshes.append(mesh)
            part_of_face.append(np.full(len(mesh.faces), part))
    mesh = trimesh.util.concatenate(meshes)
    part_of_face = np.concatenate(part_of_face)
    area = mesh.area_faces
    face = rng.choice(len(area), size=num_points, p=area / area.sum())
    tri = mesh.triangles[face]
    r1, r2 = rng.random((num_points, 1)), rng.random((num_points, 1))
    s = np.sqrt(r1)
    pos = (1 - s) * tri[:, 0] + s * (1 - r2) * tri[:, 1] + s * r2 * tri[:, 2]
    pos -= pos.mean(0)
    pos /= np.linalg.norm(pos, axis=1).max()
    return Data(
        pos=torch.tensor(pos, dtype=torch.float32),
        normal=torch.tensor(mesh.face_normals[face], dtype=torch.float32),
        y=torch.tensor([label]),
        part=torch.tensor(part_of_face[face], dtype=torch.long),
    )


class Shapes(Dataset):
    """The procedural set: ``per_class`` instances of each of the 16 classes per split.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (independent seeds).
        per_class: instances per class.
        num_points: points per shape.
        seed: base seed; (seed, split, per_class, num_points) identify the cache file.
        transform: applied to each ``Data`` on access (e.g. a random rotation).
        cache_dir: default ``~/.cache/geo3d/shapes``; None-like ``""`` disables caching.
    """

    def __init__(
        self,
        split: str = "train",
        per_class: int = 100,
        num_points: int = 1024,
        seed: int = 0,
        transform: Callable[[Data], Data] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"Shapes: split must be train, val or test, got {split!r}")
        self.split, self.transform = split, transform
        key = f"v{CACHE_VERSION}-{seed}-{split}-{per_class}-{num_points}"

        def build() -> dict[str, torch.Tensor]:
            rng = np.random.default_rng([seed, {"train": 0, "val": 1, "test": 2}[split]])
            labels = np.repeat(np.arange(len(CLASSES)), per_class)
            rng.shuffle(labels)
            shapes = [make_shape(int(lab), num_points, rng) for lab in labels]
            return {k: torch.stack([getattr(s, k) for s in shapes]) for k in ("pos", "normal", "y", "part")}

        self.data = load_or_build("shapes", key, cache_dir, build)

    def __len__(self) -> int:
        return len(self.data["y"])

    def __getitem__(self, k: int) -> Data:
        d = Data(
            pos=self.data["pos"][k],
            normal=self.data["normal"][k],
            y=self.data["y"][k],
            part=self.data["part"][k],
        )
        return self.transform(d) if self.transform is not None else d
