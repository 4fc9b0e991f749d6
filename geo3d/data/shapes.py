"""``Shapes``: a procedural, offline point-cloud set of 16 part-labelled object classes.

Every object is a composition of trimesh primitives (boxes, cylinders, spheres,
cones, capsules, tori) with random proportions, sampled on its surface by area
with face normals; each point carries the id of the primitive group it came
from (its part). Part ids are global and grouped per class, as in
ShapeNetPart (``PARTS[name]`` lists a class's part ids). Deterministic from the
seed: instance ``k`` of a split always looks the same, and the whole split is
cached after the first build (``$GEO3D_CACHE/shapes``, default ``~/.cache/geo3d/shapes``).

Classes are chosen so that simple statistics do not separate them: several
share primitives and proportions (mug/bottle/cylinder, lamp/mushroom,
snowman/dumbbell/capsule), and sizes are normalised away.

Two difficulties (``Shapes(difficulty=...)``, part of the cache key):

* ``"standard"``: narrow proportions, one arrangement per class. The shipped
  models were trained on it, and it is too easy: a D2 histogram of pairwise
  distances plus an MLP (``benchmarks/shapes_baseline.py``) scores 96.6%, because
  each class has its own, tight distance distribution.
* ``"hard"``: the same classes and parts, built to make global distance
  statistics overlap across classes while the arrangement of the parts still
  decides the class (and so stays learnable by a model that sees the geometry):

  - wide, independent proportions per part (plates to rods, squat to tall),
    so one class's D2 histograms spread over its neighbours';
  - several arrangements per class: legs at the corners, inset, splayed, 3 or 4
    around a round top, or a pedestal; a slab or a two-post back, tilted; a
    handle at any height; a shade opening down or up, on an off-centre pole;
    high or low, swept wings and a T- or low tail; spherical or disc weights;
  - an anisotropic stretch of the whole object (each axis by ``exp(+-0.3)``),
    which moves every distance but no part's place in the arrangement;
  - up to 3 small distractors (knobs: a sphere, cube or rod) stuck on the
    surface, each labelled as the part it sits on;
  - a partial surface: most shapes lose up to 25% of their points to a planar
    cut, refused when a part would lose half of its own (every part stays).

  Every arrangement has a mirror plane, and the random distractors and cuts come
  in both hands with equal probability, so no class is another's mirror image:
  E(3)-invariant models such as TinvNN cannot see reflections. Part ids and
  ``PARTS`` are the standard ones. The generator is about as fast as the
  standard one (a few ms per shape).
"""

from __future__ import annotations

import functools
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
DIFFICULTIES = ("standard", "hard")
# The hard variant's perturbations (module docstring): stretch factors in exp(+-HARD_STRETCH) per
# axis; up to HARD_DISTRACTORS small parts of radius HARD_DISTRACTOR_SIZE x the object's; with
# probability HARD_CUT_PROB a planar cut removes up to HARD_MAX_CUT of the points, refused when
# a part would keep less than HARD_MIN_PART_KEPT of its own.
HARD_STRETCH = 0.3
HARD_DISTRACTORS = 3
HARD_DISTRACTOR_SIZE = (0.03, 0.1)
HARD_CUT_PROB = 0.7
HARD_MAX_CUT = 0.25
HARD_MIN_PART_KEPT = 0.5


def _triangles(groups, parts):
    """All faces of ``groups`` as ``triangles [F, 3, 3]`` and the part id of each face ``[F]``."""
    tris, part_of_face = [], []
    for part, group in zip(parts, groups, strict=True):
        for mesh in group:
            tris.append(mesh.triangles)
            part_of_face.append(np.full(len(mesh.faces), part))
    return np.concatenate(tris), np.concatenate(part_of_face)


def _stretch(tri, rng, amount):
    """Scale the object along its own x, y, z by independent log-uniform factors in ``exp(+-amount)``."""
    return tri * np.exp(rng.uniform(-amount, amount, 3))


@functools.cache
def _distractor_templates() -> tuple[np.ndarray, ...]:
    """Unit-radius knob shapes as triangles ``[F, 3, 3]``: a sphere, a cube, a short rod."""
    from trimesh import creation

    meshes = [
        creation.icosphere(1, 1.0),
        creation.box((2.0, 2.0, 2.0)),
        creation.cylinder(0.5, 3.0, sections=8),
    ]
    return tuple(m.triangles for m in meshes)


def _distractors(tri, part_of_face, rng, max_count, size):
    """0..``max_count`` small spheres, boxes or rods stuck on the surface, each labelled as its host part.

    ``size``: their radius as a fraction of the object's radius. They change the
    surface a little (like knobs, rivets, labels) but never which part is which.
    """
    count = int(rng.integers(0, max_count + 1))
    if count == 0:
        return tri, part_of_face
    area = _areas(tri)
    corners = tri.reshape(-1, 3)
    radius = np.linalg.norm(corners - corners.mean(0), axis=1).max()
    extra_tri, extra_part = [tri], [part_of_face]
    for _ in range(count):
        face = rng.choice(len(area), p=area / area.sum())
        template = _distractor_templates()[int(rng.integers(3))]
        extra_tri.append(template * (radius * float(rng.uniform(*size))) + tri[face].mean(0))
        extra_part.append(np.full(len(template), part_of_face[face]))
    return np.concatenate(extra_tri), np.concatenate(extra_part)


def _areas(tri):
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def _sample_surface(tri, rng, n):
    """``n`` points uniform by area on the triangles: ``(pos [n, 3], face [n])``."""
    area = _areas(tri)
    face = rng.choice(len(area), size=n, p=area / area.sum())
    t = tri[face]
    r1, r2 = rng.random((n, 1)), rng.random((n, 1))
    s = np.sqrt(r1)
    return (1 - s) * t[:, 0] + s * (1 - r2) * t[:, 1] + s * r2 * t[:, 2], face


def _partial_view(pos, part, rng, num_points, min_part_kept):
    """Keep the ``num_points`` of ``pos`` lowest along a random direction (a planar cut), shuffled.

    The cut is refused (the first ``num_points`` are kept) when it would take more
    than ``1 - min_part_kept`` of any part's points: a partial surface, but every
    part still there to recognise.
    """
    direction = rng.normal(size=3)
    keep = np.argsort(pos @ direction)[:num_points]
    before = np.bincount(part, minlength=NUM_PARTS)
    after = np.bincount(part[keep], minlength=NUM_PARTS)
    if (after < min_part_kept * before).any():
        keep = np.arange(num_points)
    return keep[rng.permutation(num_points)]


def _sample_standard(label: int, num_points: int, rng: np.random.Generator):
    """``(pos, normal, part)`` of a standard instance: area-uniform points on its primitives."""
    import trimesh

    from geo3d.data.shape_meshes import class_meshes  # imports trimesh (1.5 s): only when building

    groups = class_meshes(label, rng, hard=False)
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
    return pos, mesh.face_normals[face], part_of_face[face]


def _sample_hard(label: int, num_points: int, rng: np.random.Generator):
    """``(pos, normal, part)`` of a hard instance: stretched, with distractors, maybe cut by a plane."""
    from geo3d.data.shape_meshes import class_meshes

    groups = class_meshes(label, rng, hard=True)
    tri, part_of_face = _triangles(groups, PARTS[CLASS_NAMES[label]])
    tri = _stretch(tri, rng, HARD_STRETCH)
    tri, part_of_face = _distractors(tri, part_of_face, rng, HARD_DISTRACTORS, HARD_DISTRACTOR_SIZE)
    cut = float(rng.uniform(0.0, HARD_MAX_CUT)) if rng.random() < HARD_CUT_PROB else 0.0
    pos, face = _sample_surface(tri, rng, math.ceil(num_points / (1 - cut)))
    keep = _partial_view(pos, part_of_face[face], rng, num_points, HARD_MIN_PART_KEPT)
    pos, face = pos[keep], face[keep]
    n = np.cross(tri[face, 1] - tri[face, 0], tri[face, 2] - tri[face, 0])
    return pos, n / np.linalg.norm(n, axis=1, keepdims=True), part_of_face[face]


def make_shape(label: int, num_points: int, rng: np.random.Generator, difficulty: str = "standard") -> Data:
    """One instance of class ``label``: ``pos [P, 3]``, ``normal [P, 3]``, ``y [1]``, ``part [P]``.

    Points are sampled by area over all the class's primitives; the cloud is
    centred and scaled into the unit sphere. ``difficulty``: ``"standard"`` or
    ``"hard"`` (see the module docstring).
    """
    if difficulty == "standard":
        pos, normal, part = _sample_standard(label, num_points, rng)
    elif difficulty == "hard":
        pos, normal, part = _sample_hard(label, num_points, rng)
    else:
        raise ValueError(f"Shapes: difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    pos -= pos.mean(0)
    pos /= np.linalg.norm(pos, axis=1).max()
    return Data(
        pos=torch.tensor(pos, dtype=torch.float32),
        normal=torch.tensor(normal, dtype=torch.float32),
        y=torch.tensor([label]),
        part=torch.tensor(part, dtype=torch.long),
    )


class Shapes(Dataset):
    """The procedural set: ``per_class`` instances of each of the 16 classes per split.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (independent seeds).
        per_class: instances per class.
        num_points: points per shape.
        seed: base seed; (seed, split, per_class, num_points) identify the cache file.
        transform: applied to each ``Data`` on access (e.g. a random rotation).
        cache_dir: default ``$GEO3D_CACHE/shapes`` or ``~/.cache/geo3d/shapes``; ``""`` disables caching.
        difficulty: ``"standard"`` (the shipped models' data) or ``"hard"`` (module docstring);
            part of the cache key (``"standard"`` keeps the key it always had).
    """

    def __init__(
        self,
        split: str = "train",
        per_class: int = 100,
        num_points: int = 1024,
        seed: int = 0,
        transform: Callable[[Data], Data] | None = None,
        cache_dir: str | Path | None = None,
        difficulty: str = "standard",
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"Shapes: split must be train, val or test, got {split!r}")
        if difficulty not in DIFFICULTIES:
            raise ValueError(
                f"Shapes: difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}"
            )
        self.split, self.transform, self.difficulty = split, transform, difficulty
        key = f"v{CACHE_VERSION}-{seed}-{split}-{per_class}-{num_points}"
        if difficulty != "standard":
            key += f"-{difficulty}"

        def build() -> dict[str, torch.Tensor]:
            rng = np.random.default_rng([seed, {"train": 0, "val": 1, "test": 2}[split]])
            labels = np.repeat(np.arange(len(CLASSES)), per_class)
            rng.shuffle(labels)
            shapes = [make_shape(int(lab), num_points, rng, difficulty) for lab in labels]
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
