"""Procedural Rooms scenes and their evaluation protocols: labels, boxes, placement, occlusion, rigid motions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geo3d.data.room_layout import CLASS_NAMES, MARGIN, make_layout
from geo3d.data.rooms import Rooms, _inside, make_scene
from geo3d.data.scene_protocols import (
    PROTOCOLS,
    ProtocolSplit,
    apply_protocol,
    box_corners,
    fit_yaw_boxes,
)


def local_coords(pos: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Points ``[n, 3]`` in the frame of a yaw box ``[7]`` (float64)."""
    c, s = math.cos(float(box[6])), math.sin(float(box[6]))
    q = pos.double() - box[:3].double()
    return torch.stack([c * q[:, 0] + s * q[:, 1], -s * q[:, 0] + c * q[:, 1], q[:, 2]], 1)


def max_outside(data) -> float:
    """How far (metres) the worst object point lies outside its box."""
    worst = 0.0
    for m in range(int(data.num_objects)):
        box = data.boxes[m].double()
        worst = max(
            worst, float((local_coords(data.pos[data.instance == m], box).abs() - box[3:6] / 2).max())
        )
    return worst


def test_rooms_are_deterministic_cached_and_labelled(tmp_path):
    a = Rooms("train", 3, num_points=1500, cache_dir=tmp_path)
    b = Rooms("train", 3, num_points=1500, cache_dir=tmp_path)  # from the cache
    c = Rooms("train", 3, num_points=1500, cache_dir="")  # rebuilt
    assert len(a) == 3 and len(list(tmp_path.iterdir())) == 1
    for k in range(3):
        for key in ("pos", "normal", "semantic", "instance", "boxes", "box_class", "num_objects"):
            assert torch.equal(a[k][key], b[k][key]) and torch.equal(a[k][key], c[k][key]), key
    assert not torch.equal(Rooms("test", 1, num_points=1500, cache_dir="")[0].pos, a[0].pos)
    for k in range(3):
        d = a[k]
        m = int(d.num_objects)
        assert 4 <= m <= 12 and d.boxes.shape == (m, 7) and d.box_class.shape == (m,)
        assert d.pos.shape == d.normal.shape == (1500, 3) and d.pos.dtype == d.normal.dtype == torch.float32
        assert d.semantic.dtype == d.instance.dtype == d.box_class.dtype == torch.long
        assert (
            d.instance.min() >= -1
            and d.instance.max() < m
            and 0 <= d.box_class.min() <= d.box_class.max() < 8
        )
        expected = torch.where(d.instance < 0, 0, d.box_class[d.instance.clamp(min=0)] + 1)
        assert torch.equal(d.semantic, expected)
        assert torch.allclose(d.normal.norm(dim=1), torch.ones(1500), atol=1e-5)
        assert d.pos[d.instance < 0, 2].abs().max() <= 3 * 0.003 + 1e-6  # the floor, up to the noise
        assert (d.boxes[:, 6] >= -math.pi).all() and (d.boxes[:, 6] < math.pi).all()
        assert torch.allclose(d.boxes[:, 2], d.boxes[:, 5] / 2)  # standing on the floor
    with pytest.raises(ValueError, match="split must be"):
        Rooms("dev", 1, cache_dir="")


def test_aligned_rooms_snap_the_same_layout_square_to_the_room(tmp_path):
    rand = Rooms("test", 3, num_points=1500, cache_dir="")
    aligned = Rooms("test", 3, num_points=1500, object_yaw="aligned", cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1  # its own cache file
    for k in range(3):
        r, a = rand[k], aligned[k]
        # same rooms, objects, classes and centres; only the yaws move, to the nearest quarter turn
        assert torch.equal(r.box_class, a.box_class) and torch.equal(r.boxes[:, :6], a.boxes[:, :6])
        quarter = a.boxes[:, 6].double() / (math.pi / 2)
        assert torch.allclose(quarter, quarter.round(), atol=1e-6)
        assert (a.boxes[:, 6] >= -math.pi).all() and (a.boxes[:, 6] < math.pi).all()
        turn = (
            torch.remainder(r.boxes[:, 6].double() - a.boxes[:, 6].double() + math.pi, 2 * math.pi) - math.pi
        )
        assert turn.abs().max() <= math.pi / 4 + 1e-6
        assert max_outside(a) <= 3 * 0.003 + 1e-5  # points were sampled from the snapped objects
    with pytest.raises(ValueError, match="object_yaw must be one of"):
        Rooms("test", 1, object_yaw="square", cache_dir="")


def test_a_fraction_of_the_scenes_gets_walls():
    """``walls=0.5``: each scene is the walled or the wall-less version of the same room, by a per-scene draw."""
    mixed = Rooms("train", 12, num_points=800, walls=0.5, cache_dir="")
    plain = Rooms("train", 12, num_points=800, cache_dir="")
    walled = Rooms("train", 12, num_points=800, walls=True, cache_dir="")
    kinds = []
    for k in range(12):
        m = mixed[k]
        same = [torch.equal(m.pos, ref[k].pos) for ref in (plain, walled)]
        assert sum(same) == 1, k
        kinds.append(same[1])
        assert torch.equal(m.boxes, plain[k].boxes)  # the same room either way
        high_background = bool(((m.instance < 0) & (m.pos[:, 2] > 0.05)).any())
        assert high_background == same[1]  # wall points are background above the floor
    assert 0 < sum(kinds) < 12
    prefix = Rooms("train", 5, num_points=800, walls=0.5, cache_dir="")  # a scene keeps its walls
    assert all(torch.equal(prefix[k].pos, mixed[k].pos) for k in range(5))
    with pytest.raises(ValueError, match="walls must be a bool or a fraction"):
        Rooms("train", 1, walls=1.5, cache_dir="")


def test_boxes_tightly_contain_their_objects():
    for k in range(2):
        d = make_scene(0, "val", k, num_points=20000, noise=0.0)
        assert max_outside(d) < 1e-5
        for m in range(int(d.num_objects)):
            box = d.boxes[m].double()
            ext = local_coords(d.pos[d.instance == m], box)
            gap = box[3:6] / 2 - ext.abs().amax(0)  # tight: points reach every face of the box
            assert gap.max() < 0.05, (CLASS_NAMES[int(d.box_class[m])], gap)
        noisy = make_scene(0, "val", k, num_points=20000, noise=0.003)
        assert torch.equal(noisy.boxes, d.boxes) and max_outside(noisy) <= 3 * 0.003 + 1e-5


def test_objects_never_overlap_under_any_own_rotation():
    for k in range(30):
        scene = make_layout(np.random.default_rng([0, 0, k, 0]))
        r = np.array([o.radius for o in scene.objects])
        dist = np.linalg.norm(scene.xy[:, None] - scene.xy[None], axis=-1)
        m = len(r)
        assert 4 <= m <= 12
        assert (
            dist[~np.eye(m, dtype=bool)] >= (r[:, None] + r[None] + MARGIN)[~np.eye(m, dtype=bool)] - 1e-9
        ).all()
        w, length = scene.room
        assert (np.abs(scene.xy) + r[:, None] <= np.array([w, length]) / 2 - MARGIN + 1e-9).all()
        for obj, label in zip(scene.objects, scene.label, strict=True):
            assert 0.2 < obj.size[2] < 2.2 and 0.3 < max(obj.size[:2]) < 2.5, CLASS_NAMES[label]


def test_occlusion_keeps_only_points_seen_from_the_viewpoint():
    scene = make_layout(np.random.default_rng([0, 2, 0, 0]))
    full = make_scene(0, "test", 0, num_points=4000, noise=0.0)
    seen = make_scene(0, "test", 0, num_points=4000, noise=0.0, occlusion=True)
    assert seen.pos.shape == (4000, 3) and torch.equal(seen.boxes, full.boxes)
    cam = torch.tensor(scene.camera, dtype=torch.float64)
    obj = seen.instance >= 0
    facing = ((cam - seen.pos.double()) * seen.normal.double()).sum(1)
    assert facing[obj].min() > -1e-4  # no back faces survive
    assert (
        ((cam - full.pos.double()) * full.normal.double()).sum(1)[full.instance >= 0] < -0.01
    ).float().mean() > 0.2
    # oracle: march along each segment; no sample before the point may lie deep inside a primitive
    pts = seen.pos[:300].double().numpy()
    steps = np.linspace(0.0, 1.0, 400)[:-4]
    for p in pts:
        line = scene.camera + steps[:, None] * (p - scene.camera)
        for o, obj_ in enumerate(scene.objects):
            c, s = math.cos(scene.yaw[o]), math.sin(scene.yaw[o])
            q = line[:, :2] - scene.xy[o]
            local = np.stack([c * q[:, 0] + s * q[:, 1], -s * q[:, 0] + c * q[:, 1], line[:, 2]], 1)
            shrunk = type(obj_)(obj_.kind, obj_.centre, obj_.half - 2e-3, obj_.size)
            assert not _inside(local, shrunk).any()


@pytest.fixture(scope="module")
def scene():
    return make_scene(0, "train", 1, num_points=3000, noise=0.0)


def test_per_object_z_moves_each_object_in_its_box_and_nothing_else(scene):
    moved = apply_protocol(scene, "per_object_z", torch.Generator().manual_seed(0))
    bg = scene.instance < 0
    assert torch.equal(moved.pos[bg], scene.pos[bg]) and torch.equal(moved.normal[bg], scene.normal[bg])
    assert torch.equal(moved.semantic, scene.semantic) and torch.equal(moved.instance, scene.instance)
    assert torch.equal(moved.boxes[:, :6], scene.boxes[:, :6])
    assert (moved.boxes[:, 6] - scene.boxes[:, 6]).abs().min() > 1e-4  # every yaw changed
    assert max_outside(moved) < 1e-5
    assert not torch.allclose(moved.pos[~bg], scene.pos[~bg], atol=1e-2)
    # each object's points in its own box frame are unchanged: a rotation about the box's vertical axis
    for m in range(int(scene.num_objects)):
        sel = scene.instance == m
        assert torch.allclose(
            local_coords(moved.pos[sel], moved.boxes[m]),
            local_coords(scene.pos[sel], scene.boxes[m]),
            atol=1e-5,
        )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_protocols_are_rigid_per_object_and_keep_labels(scene, protocol):
    moved = apply_protocol(scene, protocol, torch.Generator().manual_seed(1))
    assert moved.pos.shape == scene.pos.shape and moved.pos.dtype == torch.float32
    for key in ("semantic", "instance", "box_class", "num_objects"):
        assert torch.equal(moved[key], scene[key])
    for m in range(-1, int(scene.num_objects)):
        sel = scene.instance == m
        a, b = scene.pos[sel][:200].double(), moved.pos[sel][:200].double()
        assert torch.allclose(torch.cdist(a, a), torch.cdist(b, b), atol=2e-5)
        dots = (scene.pos[sel][:200, None] - scene.pos[sel][None, :200]) @ scene.normal[sel][:200].T
        dots2 = (moved.pos[sel][:200, None] - moved.pos[sel][None, :200]) @ moved.normal[sel][:200].T
        assert torch.allclose(dots, dots2, atol=1e-4)  # normals move with their points
    assert max_outside(moved) < 1e-5  # boxes (re-fitted under scene_so3) still hold their objects
    if protocol == "scene_z":
        assert torch.equal(moved.pos[:, 2], scene.pos[:, 2]) and torch.equal(
            moved.boxes[:, 3:6], scene.boxes[:, 3:6]
        )
    if protocol != "canonical":
        assert not torch.allclose(moved.pos, scene.pos, atol=1e-2)


def test_yaw_box_refit_and_protocol_errors(scene):
    boxes = scene.boxes.double()
    assert torch.allclose(fit_yaw_boxes(box_corners(boxes), boxes[:, 6]), boxes, atol=1e-9)
    # a tilt makes the upright box grow, never shrink, and keeps its centre
    tilt = torch.tensor([[1.0, 0, 0], [0, math.cos(0.3), -math.sin(0.3)], [0, math.sin(0.3), math.cos(0.3)]])
    corners = box_corners(boxes) @ tilt.double().T
    fit = fit_yaw_boxes(corners, boxes[:, 6])
    assert torch.allclose(fit[:, :3], boxes[:, :3] @ tilt.double().T, atol=1e-9)
    assert (fit[:, 3:6].prod(1) >= boxes[:, 3:6].prod(1) - 1e-9).all()
    with pytest.raises(ValueError, match="protocol must be one of"):
        apply_protocol(scene, "z")
    split = ProtocolSplit([scene, scene], "scene_so3", seed=3)
    assert torch.equal(split[1].pos, ProtocolSplit([scene, scene], "scene_so3", seed=3)[1].pos)
    assert not torch.equal(split[0].pos, split[1].pos)
