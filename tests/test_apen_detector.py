"""apen_detector (APEN + segmentation + detection heads): config errors, `geo3d train` / `geo3d evaluate`,
exact per-object equivariance of the seed votes and logits with the true partition, and global motions
about the vertical moving the decoded boxes (centres, frame-relative yaws)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import fraction_found, write_ply
from torch_geometric.data import Batch
from typer.testing import CliRunner

from geo3d.cli import app
from geo3d.data.rooms import make_scene
from geo3d.data.scene_protocols import PROTOCOLS
from geo3d.models.apen_detector import APENDetector
from geo3d.nn.heads.frame_detection import frame_boxes, frame_heading_loss
from geo3d.registry import build_model
from geo3d.train import load_config, make_task

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/apen_rooms.yaml"
runner = CliRunner()
SMALL = {
    "backbone": {
        "num_fps_parts": 8,
        "num_random_parts": 4,
        "random_part_min_dist": 0.3,
        "variances": [0.02, 0.05],
        "inv_channels": [4, 8],
        "vec_channels": [2, 4],
        "em_iters": 6,
        "knn": 6,
        "point_widths": [16, 24],
        "head_widths": [32, 32],
    },
    "num_proposals": 16,
    "vote_k": 16,
    "head_width": 32,
}


def _rot_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _with_pos(scene, pos):
    out = scene.clone()
    out.pos = pos
    return out


def _batch(scenes, dtype=torch.float32) -> Batch:
    batch = Batch.from_data_list(scenes)
    batch.pos = batch.pos.to(dtype)
    return batch


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="num_seed"):
        APENDetector({"num_seed": 10})
    with pytest.raises(ValueError, match=r"'backbone'.*varainces"):
        APENDetector({"backbone": {"varainces": [0.1]}})
    with pytest.raises(ValueError, match="num_proposals"):
        APENDetector({"num_seeds": 8, "num_proposals": 16})
    with pytest.raises(ValueError, match="mean_sizes"):
        APENDetector({"num_classes": 2, "mean_sizes": [[1.0, 1.0, 1.0]]})
    with pytest.raises(ValueError, match="'heading_frame' must be one of"):
        APENDetector({"heading_frame": "axis"})
    with pytest.raises(ValueError, match=r"vec_channels\[-1\] >= 1"):
        APENDetector(
            {**SMALL, "heading_frame": "learned", "backbone": {**SMALL["backbone"], "vec_channels": [2, 0]}}
        )
    model = build_model("apen_detector", {**SMALL, "num_points": 512, "class_names": ["a"] * 8})
    assert model.backbone.seg_head.out_features == 9  # background + the 8 object classes
    cfg = load_config(CONFIG)
    assert cfg.task == "scene_detection_segmentation" and cfg.data.num_points == 4096
    with pytest.raises(ValueError, match=r"model\.seg_weight"):
        make_task(load_config(CONFIG, ["model.seg_weight=-1"]))


def test_train_three_steps_then_evaluate_every_protocol(tmp_path):
    overrides = [
        "train.max_steps=3",
        "train.batch_size=2",
        "data.num_scenes=4",
        "data.val_scenes=2",
        "data.num_points=512",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"train.out_dir={tmp_path / 'run'}",
    ]
    result = runner.invoke(app, ["train", str(CONFIG), *(a for o in overrides for a in ("-s", o))])
    assert result.exit_code == 0, result.output
    last = tmp_path / "run" / "last.pt"
    result = runner.invoke(
        app, ["evaluate", "--model", str(last), "--protocol", "all", "--scenes", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert list(metrics) == list(PROTOCOLS)
    for m in metrics.values():
        for key in ("miou", "map@0.25", "map@0.5"):
            assert 0.0 <= m[key] <= 1.0, (key, m)
        assert all(math.isfinite(v) for v in m.values())
    # geo3d detect on a scan file: boxes JSON (with the segmentation head's point classes inside)
    ply = write_ply(tmp_path / "scan.ply", make_scene(0, "test", 0, num_points=600).pos)
    out = tmp_path / "boxes.json"
    args = ["detect", str(ply), "--model", str(last), "-o", str(out), "--score-threshold", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    boxes = json.loads(out.read_text())["boxes"]
    assert boxes and set(boxes[0]) == {"class", "score", "centre", "size", "yaw"}


def test_per_object_motions_move_seed_votes_and_keep_logits_given_the_true_partition():
    scene = make_scene(0, "test", 3, num_points=1024)
    gen = torch.Generator().manual_seed(0)
    pos, inst = scene.pos.double(), scene.instance
    moved = pos.clone()
    motions = {}
    for j in range(int(scene.num_objects)):
        sel = inst == j
        rot = _rot_z(float(torch.rand((), generator=gen, dtype=torch.float64)) * 2 * math.pi)
        centre, shift = scene.boxes[j, :3].double(), torch.randn(3, generator=gen, dtype=torch.float64)
        moved[sel] = (pos[sel] - centre) @ rot.T + centre + shift
        motions[j] = (rot, centre, shift)
    model = APENDetector({**SMALL, "heading_frame": "learned"}).eval()
    part = inst + 1  # the true partition: background is one part, every object another
    with torch.no_grad():
        a = model(_batch([_with_pos(scene, pos)]), partition=part)
        b = model(_batch([_with_pos(scene, moved)]), partition=part)
    assert torch.equal(a["seed_index"], b["seed_index"])
    want = a["vote_pos"][0].double().clone()
    want_axis = a["seed_axis"][0].double().clone()  # learned heading frame: turns, does not shift
    for j, (rot, centre, shift) in motions.items():
        sel = inst == j
        want[sel] = (want[sel] - centre) @ rot.T + centre + shift
        want_axis[sel] = want_axis[sel] @ rot.T
    vote_err = (want - b["vote_pos"][0].double()).abs().max().item()
    axis_err = (want_axis - b["seed_axis"][0].double()).abs().max().item()
    logit_err = (a["seg_logits"] - b["seg_logits"]).abs().max().item()
    feat_err = (a["feat"] - b["feat"]).abs().max().item()
    print(f"votes {vote_err:.1e} axes {axis_err:.1e} seg logits {logit_err:.1e} features {feat_err:.1e}")
    assert max(vote_err, axis_err, logit_err, feat_err) < 1e-4
    assert a["seed_axis"].abs().max() > 1e-3
    assert a["seg_logits"].abs().max() > 1e-3 and (a["vote_pos"] - b["vote_pos"]).abs().max() > 0.1


def test_global_motion_about_the_vertical_moves_the_boxes():
    """Rotation about z + translation, predicted partitions with the same draws: the decoded boxes follow
    (centres move, sizes / scores / labels stay, yaws turn by the angle modulo a half turn)."""
    scenes = [make_scene(0, "test", k, num_points=768) for k in range(2)]
    angle, shift = 1.1, torch.tensor([0.7, -2.5, 0.4], dtype=torch.float64)
    rot = _rot_z(angle)
    model = APENDetector(SMALL).double().eval()
    batch = _batch(scenes, torch.float64)
    moved = _batch(scenes, torch.float64)
    moved.pos = batch.pos @ rot.T + shift
    with torch.no_grad():
        a = model(batch, generator=torch.Generator().manual_seed(3))
        b = model(moved, generator=torch.Generator().manual_seed(3))
        da = model.decode(a, nms_iou=1.0, score_threshold=0.0)
        db = model.decode(b, nms_iou=1.0, score_threshold=0.0)
    assert all(torch.equal(p, q) for p, q in zip(a["partitions"], b["partitions"], strict=True))
    assert (a["seg_logits"] - b["seg_logits"]).abs().max() < 1e-9
    for x, y in zip(da, db, strict=True):
        assert len(x["boxes"]) == 16 and torch.equal(x["labels"], y["labels"])
        assert torch.allclose(x["scores"], y["scores"], atol=1e-9)
        assert torch.allclose(x["boxes"][:, :3] @ rot.T + shift, y["boxes"][:, :3], atol=1e-8)
        assert torch.allclose(x["boxes"][:, 3:6], y["boxes"][:, 3:6], atol=1e-9)
        turn = torch.remainder(y["boxes"][:, 6] - x["boxes"][:, 6] - angle + math.pi / 2, math.pi)
        assert torch.allclose(turn, torch.full_like(turn, math.pi / 2), atol=1e-8)
    # translation alone, in float32: the decoded centres move with the scene
    model = model.float()
    shifted = _batch(scenes)
    shifted.pos = shifted.pos + torch.tensor([3.0, -1.0, 0.5])
    with torch.no_grad():
        ca = model.decode(
            model(_batch(scenes), generator=torch.Generator().manual_seed(3)), score_threshold=0.0
        )
        cb = model.decode(model(shifted, generator=torch.Generator().manual_seed(3)), score_threshold=0.0)
    for x, y in zip(ca, cb, strict=True):
        assert torch.allclose(
            x["boxes"][:, :3] + torch.tensor([3.0, -1.0, 0.5]), y["boxes"][:, :3], atol=1e-4
        )


def test_frame_relative_heading_round_trip():
    """Logits encoding (yaw - frame) mod pi decode back to the yaw modulo a half turn, at zero loss."""
    b, p, nh, nc = 1, 5, 12, 8
    yaw = torch.tensor([0.3, -2.0, 3.0, 1.2, -0.4])
    frame = torch.tensor([1.0, 0.5, -1.4, 0.0, 1.5])
    centre = torch.randn(b, p, 3, generator=torch.Generator().manual_seed(0))
    relative = torch.remainder(yaw - frame, math.pi)
    width = math.pi / nh  # bins of twice the angle are 2 pi / nh wide
    cls = torch.round(relative / width).long() % nh
    res = (relative - cls * width + math.pi / 2) % math.pi - math.pi / 2
    logits = torch.full((b, p, nh), -30.0).scatter(-1, cls[None, :, None], 30.0)
    residuals = torch.zeros(b, p, nh).scatter(-1, cls[None, :, None], (res / (width / 2))[None, :, None])
    outputs = {
        "center": centre,
        "aggregated_pos": centre,
        "heading_frame": frame[None],
        "heading_logits": logits,
        "heading_residuals": residuals,
        "size_logits": torch.zeros(b, p, nc),
        "size_residuals": torch.zeros(b, p, nc, 3),
    }
    boxes = frame_boxes(outputs, torch.ones(nc, 3))
    diff = torch.remainder(boxes[0, :, 6] - yaw + math.pi / 2, math.pi) - math.pi / 2
    assert diff.abs().max() < 1e-5
    gt = torch.cat([centre[0], torch.ones(p, 3), yaw[:, None]], dim=1)
    cls_loss, reg_loss = frame_heading_loss(outputs, [gt])
    assert float(cls_loss) < 1e-6 and float(reg_loss) < 1e-10


def test_fps_seed_subsample():
    """num_seeds: S takes APEN's FPS seeds (cheaper, not per-object invariant) instead of every point."""
    scene = make_scene(0, "test", 1, num_points=400)
    model = APENDetector({**SMALL, "num_seeds": 48}).eval()
    with torch.no_grad():
        out = model(_batch([scene]), generator=torch.Generator().manual_seed(0))
    assert out["seed_index"].shape == (1, 48) and out["vote_pos"].shape == (1, 48, 3)
    assert torch.equal(out["vote_pos"][0], out["vote"][out["seed_index"][0]])
    assert out["center"].shape == (1, 16, 3) and len(model.decode(out)) == 1


def test_a_segmentation_apen_seeds_the_detector_backbone(tmp_path):
    from geo3d.checkpoint import CheckpointError, load_checkpoint
    from geo3d.train.trainer import train

    data = [
        "data.num_scenes=2",
        "data.val_scenes=1",
        "data.num_points=512",
        f"data.cache_dir={tmp_path / 'c'}",
    ]
    steps = ["train.max_steps=1", "train.batch_size=2", "train.eval_on_stop=false"]
    seg_cfg = load_config(
        ROOT / "configs/apen_rooms_seg.yaml", [*data, *steps, f"train.out_dir={tmp_path / 's'}"]
    )
    seg = load_checkpoint(train(make_task(seg_cfg), seg_cfg))

    warm = [*data, *steps, f"train.out_dir={tmp_path / 'd'}", f"train.init_from={tmp_path / 's' / 'last.pt'}"]
    cfg = load_config(CONFIG, warm)
    train(make_task(cfg), cfg)
    det = load_checkpoint(tmp_path / "d" / "last.pt")["extra"]["train_state"]["model"]
    moved = [
        (det[f"backbone.{k}"] - v).abs().max().item()
        for k, v in seg["state_dict"].items()
        if v.is_floating_point()
    ]
    assert 0 < max(moved) < 0.1  # one small step from the segmentation weights, not a fresh init
    assert any(k.startswith("head.") for k in det)

    # A backbone of other widths, or a checkpoint of an architecture the detector cannot take: clear errors.
    cfg = load_config(
        CONFIG, [*warm, "model.backbone.point_widths=[16,48,64]", f"train.out_dir={tmp_path / 'e'}"]
    )
    with pytest.raises(CheckpointError, match=r"train\.init_from.*'backbone' in \['point_widths'\]"):
        train(make_task(cfg), cfg)
    cfg = load_config(CONFIG, [*warm, "train.init_from=cu-emt", f"train.out_dir={tmp_path / 'f'}"])
    with pytest.raises(CheckpointError, match=r"holds a 'potential' model.*\['apen', 'apen_detector'\]"):
        train(make_task(cfg), cfg)


def test_shipped_apen_rooms_segments_detects_and_keeps_its_score_under_per_object_rotations(tmp_path):
    """`apen-rooms` on 8 test scenes, and `geo3d detect` with it on a PLY scan (measured on 100 scenes with
    one proposal per part, as shipped since issue 21: mAP@0.25 0.580 canonical, 0.558 per object; mIoU
    0.474 / 0.454)."""
    import geo3d
    from geo3d.train.scene_eval import evaluate_protocols

    model = geo3d.load_model("apen-rooms")
    got = evaluate_protocols(model, "apen_detector", ["canonical", "per_object_z", "scene_z"], num_scenes=8)
    assert got["canonical"]["miou"] > 0.35 and got["canonical"]["map@0.25"] > 0.35, got
    assert got["per_object_z"]["miou"] > got["canonical"]["miou"] - 0.03, got
    assert got["per_object_z"]["map@0.25"] > got["canonical"]["map@0.25"] - 0.1, got
    assert abs(got["scene_z"]["map@0.25"] - got["canonical"]["map@0.25"]) < 0.01, got  # exact up to round-off

    # `geo3d detect`'s pipeline (priorities, one proposal per part, duplicate suppression, the calibrated
    # threshold) on 6 test scenes: measured 0.55 of the objects found with their class over 12 scenes
    # (per scene 0.0-0.88), so one scene alone is too noisy to judge
    from geo3d.apps.detect import boxes_json, detect, fit_points
    from geo3d.data.room_layout import CLASS_NAMES

    found = []
    for index in range(6):
        scene = make_scene(0, "test", index, num_points=4096)
        result = detect(model, fit_points(scene, 4096)[0])
        found.append(fraction_found(scene, boxes_json(result, CLASS_NAMES)["boxes"]))
    assert sum(found) / len(found) >= 0.4, found

    scene = make_scene(0, "test", 3, num_points=4096)
    ply, out = write_ply(tmp_path / "room.ply", scene.pos), tmp_path / "boxes.json"
    result = runner.invoke(app, ["detect", str(ply), "--model", "apen-rooms", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert fraction_found(scene, json.loads(out.read_text())["boxes"]) > 0
