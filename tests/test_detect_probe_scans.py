"""`geo3d detect` on scans the training generator did not make: deterministic, follows the scan, no duplicates.

The probe scans (geo3d.data.probe_scans) have other furniture shapes, other floor
densities, more points than the model's num_points and optionally walls. These
tests hold the pipeline to what issue 21 asks: the same file gives the same boxes,
a scan rotated about z and moved gives the moved boxes, duplicate boxes are
suppressed, the score threshold comes calibrated in the checkpoint.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import write_ply
from torch_geometric.data import Data
from typer.testing import CliRunner

import geo3d
from geo3d.apps.detect import (
    DEFAULT_SCORE_THRESHOLD,
    calibrated_score_threshold,
    detect,
    fit_points,
    point_priority,
    scan_frame_coordinates,
)
from geo3d.cli import app
from geo3d.data.probe_scans import FURTHER_SCANS, PROBE_SET, SHAPES, make_probe_scan
from geo3d.metrics.detection import f1_by_threshold, match_by_score
from geo3d.nn.partition import random_fill
from geo3d.ops.boxes import points_in_boxes, suppress_close_centres

runner = CliRunner()


def _rot_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _move(pos: torch.Tensor, angle: float = 0.6, shift=(1.0, -2.0, 0.5)) -> torch.Tensor:
    return pos @ _rot_z(angle).T + torch.tensor(shift)


# ------------------------------------------------------------------ probe scans


def test_probe_scan_is_reproducible_and_its_boxes_hold_their_objects():
    scan = make_probe_scan(3, num_objects=5, floor_size=(7.0, 7.0), walls=True, object_points=800)
    again = make_probe_scan(3, num_objects=5, floor_size=(7.0, 7.0), walls=True, object_points=800)
    assert torch.equal(scan.pos, again.pos) and torch.equal(scan.boxes, again.boxes)
    assert len(scan.pos) == 8000 + 6000 + 5 * 800 and scan.boxes.shape == (5, 7)
    assert set(scan.shapes) <= set(SHAPES) and scan.labels.tolist() == [SHAPES[s] for s in scan.shapes]
    grown = scan.boxes.clone()
    grown[:, 3:6] += 0.03  # the 3 mm noise, 3 sigma either side
    inside = points_in_boxes(scan.pos, grown)  # [N, M]
    for k in range(5):
        own = scan.instance == k
        assert bool(inside[own, k].all()), f"object {k} ({scan.shapes[k]}) has points outside its box"
        # the box is tight: its object's points reach within 2 cm of each face
        local = scan.pos[own] - scan.boxes[k, :3]
        c, s = math.cos(float(scan.boxes[k, 6])), math.sin(float(scan.boxes[k, 6]))
        u = torch.stack(
            [c * local[:, 0] + s * local[:, 1], -s * local[:, 0] + c * local[:, 1], local[:, 2]], 1
        )
        assert bool((u.abs().amax(0) > scan.boxes[k, 3:6] / 2 - 0.02).all())
    assert bool(((scan.boxes[:, 5] > 0.3) & (scan.boxes[:, 5] < 2.2)).all())
    with pytest.raises(ValueError, match="unknown probe shapes"):
        make_probe_scan(0, shapes=("crate", "piano"))
    with pytest.raises(ValueError, match="do not fit"):
        make_probe_scan(0, num_objects=30, floor_size=(3.0, 3.0))


def test_further_scans_are_twelve_other_scenes_four_with_walls():
    """The scans that choose detector settings (benchmarks/detect_probe_scans.py --further) are not the
    probe set's, span 3-6 objects and point densities, and all build."""
    assert len(FURTHER_SCANS) == 12 and sum(v["walls"] for v in FURTHER_SCANS.values()) == 4
    assert not {v["seed"] for v in FURTHER_SCANS.values()} & {v["seed"] for v in PROBE_SET.values()}
    assert {v["num_objects"] for v in FURTHER_SCANS.values()} == {3, 4, 5, 6}
    assert len({v["object_points"] for v in FURTHER_SCANS.values()}) == 4
    for kwargs in FURTHER_SCANS.values():
        scan = make_probe_scan(**kwargs)
        assert scan.boxes.shape == (kwargs["num_objects"], 7)
        assert int((scan.instance >= 0).sum()) == kwargs["num_objects"] * kwargs["object_points"]


# ------------------------------------------------------------------ priorities and subsampling


def test_point_priorities_follow_the_scan_and_the_seed():
    pos = make_probe_scan(5, num_objects=3, object_points=1000).pos
    prio = point_priority(pos)
    assert prio.dtype == torch.float64 and bool(((prio > 0) & (prio <= 1)).all())
    assert 0.45 < float(prio.mean()) < 0.55  # uniform-looking
    perm = torch.randperm(len(pos), generator=torch.Generator().manual_seed(0))
    assert torch.equal(point_priority(pos[perm]), prio[perm]), "a reordered file: the same priorities"
    moved = point_priority(_move(pos))
    assert float((moved == prio).double().mean()) > 0.995, "only points at a cell wall may change"
    assert float((point_priority(pos, seed=1) == prio).double().mean()) < 0.01
    frame = scan_frame_coordinates(pos)
    assert torch.allclose(scan_frame_coordinates(_move(pos)), frame, atol=1e-5)


def test_fit_points_keeps_the_same_points_of_a_moved_or_reordered_scan():
    scan = make_probe_scan(1, num_objects=4)  # 28,000 points -> 4,096
    sub, note = fit_points(scan.data(), 4096)
    assert "subsampled" in note and sub.pos.shape == (4096, 3)
    key = {tuple(p) for p in sub.pos.tolist()}
    perm = torch.randperm(len(scan.pos), generator=torch.Generator().manual_seed(1))
    shuffled, _ = fit_points(Data(pos=scan.pos[perm]), 4096)
    assert {tuple(p) for p in shuffled.pos.tolist()} == key
    moved, _ = fit_points(Data(pos=_move(scan.pos)), 4096)
    back = (moved.pos - torch.tensor([1.0, -2.0, 0.5])) @ _rot_z(0.6)
    d = torch.cdist(back.double(), sub.pos.double(), compute_mode="donot_use_mm_for_euclid_dist")
    assert int((d.min(1).values > 1e-4).sum()) <= 4, "at most a couple of points at a cell wall change"
    # the subsample is uniform: object and floor points in the scan's proportion
    frac = float((sub.pos[:, 2] > 0.02).double().mean())
    assert abs(frac - 20000 / 28000) < 0.03


def test_random_initial_parts_follow_fixed_priorities():
    """APEN's random centres drawn from point_priority are a function of the points, not of their order."""
    y = torch.rand(300, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 4
    batch = torch.zeros(300, dtype=torch.long)
    prio = point_priority(y.float())
    mu0, mask0 = torch.zeros(1, 8, 3, dtype=torch.float64), torch.zeros(1, 8, dtype=torch.bool)
    mu, mask = random_fill(y, batch, mu0, mask0, 5, 0.5, priority=prio)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(3))
    mu_p, mask_p = random_fill(y[perm], batch, mu0, mask0, 5, 0.5, priority=prio[perm])
    assert int(mask.sum()) == 5 and torch.equal(mask, mask_p) and torch.equal(mu, mu_p)
    assert float(torch.pdist(mu[0, :5]).min()) > 0.5
    # the first pick is the highest-priority point
    assert torch.equal(mu[0, 0], y[int(prio.argmax())])
    with pytest.raises(ValueError, match="point_priority"):
        random_fill(y, batch, mu0, mask0, 5, 0.5, priority=torch.zeros(300))


# ------------------------------------------------------------------ duplicate suppression and calibration


def _brute_suppress(boxes, scores, fraction, labels=None, horizontal_only=False):
    axes = 2 if horizontal_only else 3
    order = sorted(range(len(boxes)), key=lambda i: (-float(scores[i]), i))
    kept = []
    for i in order:
        dup = False
        for j in kept:
            if labels is not None and int(labels[i]) != int(labels[j]):
                continue
            reach = fraction * max(float(boxes[j, 3]), float(boxes[j, 4]))
            if float((boxes[i, :axes] - boxes[j, :axes]).norm()) < reach:
                dup = True
        if not dup:
            kept.append(i)
    return kept


def test_suppress_close_centres_matches_the_greedy_definition():
    g = torch.Generator().manual_seed(4)
    boxes = torch.cat(
        [torch.rand(40, 3, generator=g) * 3, 0.3 + torch.rand(40, 3, generator=g), torch.rand(40, 1)], 1
    )
    scores, labels = torch.rand(40, generator=g), torch.randint(3, (40,), generator=g)
    for lab in (None, labels):
        for flat in (False, True):
            keep = suppress_close_centres(boxes, scores, 0.5, lab, horizontal_only=flat)
            assert keep.tolist() == _brute_suppress(boxes, scores, 0.5, lab, flat)
    # a chair found twice: as a chair box and as a wide table box around it (IoU ~0.2, NMS keeps both)
    two = torch.tensor([[0.0, 0.0, 0.4, 0.5, 0.5, 0.8, 0.0], [0.1, 0.05, 0.3, 1.2, 0.8, 0.6, 0.4]])
    assert suppress_close_centres(two, torch.tensor([0.9, 0.8])).tolist() == [0]
    apart = two.clone()
    apart[1, :2] = torch.tensor([1.5, 0.0])
    assert suppress_close_centres(apart, torch.tensor([0.9, 0.8])).tolist() == [0, 1]
    # a wardrobe found as two stacked cabinets: 0.65 m apart in z, the same place in plan
    stacked = torch.tensor(
        [[5.1, 1.71, 1.35, 0.8, 0.49, 1.09, 0.0], [5.15, 1.67, 0.7, 0.89, 0.49, 0.96, 0.0]]
    )
    assert suppress_close_centres(stacked, torch.tensor([0.59, 0.55])).tolist() == [0, 1]
    assert suppress_close_centres(stacked, torch.tensor([0.59, 0.55]), horizontal_only=True).tolist() == [0]


def test_match_by_score_and_f1():
    gt = torch.tensor([[0.0, 0, 0.5, 1, 1, 1, 0], [3.0, 0, 0.5, 1, 1, 1, 0]])
    gt_labels = torch.tensor([0, 1])
    boxes = torch.tensor(
        [
            [0.05, 0, 0.5, 1, 1, 1, 0],  # hits gt 0
            [0.0, 0.1, 0.5, 1, 1, 1, 0],  # duplicate of gt 0: false positive
            [3.0, 0, 0.5, 1, 1, 1, 0],  # on gt 1 but the wrong class
            [6.0, 0, 0.5, 1, 1, 1, 0],  # nothing there
        ]
    )
    scores, labels = torch.tensor([0.9, 0.8, 0.7, 0.2]), torch.tensor([0, 0, 0, 1])
    tp = match_by_score(boxes, scores, labels, gt, gt_labels)
    assert tp.tolist() == [True, False, False, False]
    f1 = f1_by_threshold([scores], [tp], 2, torch.tensor([0.0, 0.85, 0.95]))
    # > 0: 1 hit of 4 detections, 2 GT -> 2/6; > 0.85: 1 of 1 -> 2/3; > 0.95: nothing -> 0
    assert torch.allclose(f1, torch.tensor([2 / 6, 2 / 3, 0.0], dtype=torch.float64))


# ------------------------------------------------------------------ the shipped detectors on probe scans


@pytest.fixture(scope="module")
def apen_rooms():
    return geo3d.load_model("apen-rooms")


def test_shipped_detectors_carry_a_calibrated_threshold(apen_rooms):
    for name in ("apen-rooms", "votenet-rooms", "votenet-rooms-aligned"):
        model = apen_rooms if name == "apen-rooms" else geo3d.load_model(name)
        thr = model.geo3d_checkpoint["config"].get("score_threshold")
        assert thr is not None and 0.05 <= thr <= 0.95, name
        assert calibrated_score_threshold(model) == thr
    assert calibrated_score_threshold(torch.nn.Linear(1, 1)) == DEFAULT_SCORE_THRESHOLD


@pytest.mark.parametrize("scan_name", ["issue-21", "dense-floor", "walls"])
def test_apen_detect_is_deterministic_and_moves_with_the_scan(apen_rooms, scan_name):
    """Same file: the same boxes, exactly. Rotated 0.6 rad about z and moved, or its points reordered:
    the moved boxes, up to round-off (issue 21 measured a 0.20 m median centre shift before). In the
    issue's own scan 3 points sit at a priority-cell wall and change priority, which reorders the
    subsample; before APEN's sampled assignments were keyed by priority, that alone moved the boxes
    by 0.13 m (benchmarks/RESULTS.md). Those 3 points still draw other assignment noise, which moves
    2 of its 4 boxes by 1-2 cm and 3-11 degrees: there the issue's median is asserted, elsewhere
    every box."""
    scan = make_probe_scan(**PROBE_SET[scan_name])
    n = int(apen_rooms.geo3d_checkpoint["config"]["num_points"])
    first = detect(apen_rooms, fit_points(scan.data(), n)[0])
    second = detect(apen_rooms, fit_points(scan.data(), n)[0])
    assert len(first["boxes"]) >= 1
    for key in ("boxes", "scores", "labels", "point_class"):
        assert torch.equal(first[key], second[key]), key
    perm = torch.randperm(len(scan.pos), generator=torch.Generator().manual_seed(0))
    shuffled = detect(apen_rooms, fit_points(Data(pos=scan.pos[perm]), n)[0])
    assert len(shuffled["boxes"]) == len(first["boxes"])
    assert torch.equal(shuffled["boxes"], first["boxes"])  # the same points in the same order
    turned = detect(apen_rooms, fit_points(Data(pos=_move(scan.pos)), n)[0])
    assert len(turned["boxes"]) == len(first["boxes"])
    moved = _move(first["boxes"][:, :3])
    dist, j = ((moved[:, None] - turned["boxes"][None, :, :3]) ** 2).sum(-1).sqrt().min(1)
    turn = (
        torch.remainder(turned["boxes"][j, 6] - first["boxes"][:, 6] - 0.6 + math.pi / 2, math.pi)
        - math.pi / 2
    ).abs()
    assert float(dist.median()) < 1e-4 and float(turn.median()) < math.radians(0.1)
    if scan_name != "issue-21":
        assert float(dist.max()) < 1e-4 and float(turn.max()) < math.radians(0.1)
        assert torch.allclose(turned["boxes"][j, 3:6], first["boxes"][:, 3:6], atol=1e-3)
    assert float(dist.max()) < 0.05
    # At the calibrated threshold, within one box of the objects on every scan (issue 21's target; the
    # weights trained without walls boxed wall stretches as furniture: 7 for 6, and 1 for 3 on
    # dense-floor; benchmarks/RESULTS.md)
    assert abs(len(first["boxes"]) - len(scan.boxes)) <= 1


def test_part_proposals_pick_the_vote_nearest_each_parts_mean():
    from geo3d.models.apen_detector import APENDetectorConfig, part_proposals

    g = torch.Generator().manual_seed(5)
    n, b = 50, 2
    vote = torch.randn(b * n, 3, generator=g)
    part = torch.cat([torch.randint(4, (n,), generator=g), 4 + torch.randint(3, (n,), generator=g)])
    part_batch = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    got = part_proposals(vote, part, part_batch, n)
    assert got.shape == (2, 4)
    for k in range(7):
        members = (part == k).nonzero()[:, 0]
        mean = vote[members].mean(0)
        best = members[((vote[members] - mean) ** 2).sum(-1).argmin()]
        scene, slot = int(part_batch[k]), k - (0 if k < 4 else 4)
        assert int(got[scene, slot]) == int(best) - scene * n
    assert int(got[1, 3]) == int(got[1, 0]), "a scene with fewer parts repeats its first proposal"
    with pytest.raises(ValueError, match="'proposals' must be"):
        APENDetectorConfig.resolve({"proposals": "vote"})
    with pytest.raises(ValueError, match="needs 'num_seeds: null'"):
        APENDetectorConfig.resolve({"proposals": "parts", "num_seeds": 256})


def test_geo3d_detect_twice_on_a_ply_writes_the_same_boxes(tmp_path, apen_rooms):
    scan = make_probe_scan(**PROBE_SET["dense-floor"])
    ply = write_ply(tmp_path / "scan.ply", scan.pos.numpy())
    outs = []
    for k in range(2):
        out = tmp_path / f"boxes{k}.json"
        result = runner.invoke(app, ["detect", str(ply), "--model", "apen-rooms", "-o", str(out)])
        assert result.exit_code == 0, result.output
        thr = apen_rooms.geo3d_checkpoint["config"]["score_threshold"]
        assert f"above {thr}" in result.output
        outs.append(json.loads(out.read_text())["boxes"])
    assert outs[0] == outs[1]
    assert all(b["score"] > thr for b in outs[0])
    centres = torch.tensor([b["centre"] for b in outs[0]]).reshape(-1, 3)
    sizes = torch.tensor([b["size"] for b in outs[0]]).reshape(-1, 3)
    if len(centres) > 1:  # no two boxes within half an object size of each other
        d = ((centres[:, None] - centres[None]) ** 2).sum(-1).sqrt() + torch.eye(len(centres)) * 1e9
        assert bool((d >= 0.5 * sizes[:, :2].amax(1)[:, None] - 1e-4).all())
