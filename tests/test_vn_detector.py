"""The Vector-Neuron detector: invariant seed features and equivariant votes under SO(3) and
translations, boxes that turn with the scene about the vertical, point-order independence,
config errors, and training + evaluation through the front doors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch
from typer.testing import CliRunner

from geo3d.cli import app
from geo3d.data.rooms import make_scene
from geo3d.data.scene_protocols import PROTOCOLS
from geo3d.data.transforms import random_rotation
from geo3d.models.vn_detector import VNDetector
from geo3d.nn.heads.frame_detection import frame_axis_loss, horizontal_frame
from geo3d.registry import build_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/detect_rooms_vn.yaml"
runner = CliRunner()
TINY = {
    "sa_points": [192, 96, 48],
    "sa_radius": [0.3, 0.6, 1.2],
    "sa_k": [12, 12, 12],
    "sa_widths": [[8], [12], [16]],
    "fp_widths": [16],
    "feat_width": 32,
    "num_proposals": 16,
    "vote_k": 8,
    "head_width": 32,
    "heading_frame": "learned",  # the seeds' axes are checked with the votes
}


def _scenes(n: int = 2, points: int = 1024) -> list:
    return [make_scene(0, "test", i, num_points=points) for i in range(n)]


def _moved(scenes, rot: torch.Tensor, shift: torch.Tensor) -> Batch:
    out = []
    for s in scenes:
        s = s.clone()
        s.pos = s.pos.double() @ rot.T + shift
        out.append(s)
    return Batch.from_data_list(out)


def _trained_model() -> VNDetector:
    """A float64 model whose norm statistics are not the initial ones."""
    torch.manual_seed(0)
    model = build_model("vn_detector", TINY).double()
    scenes = _scenes()
    with torch.no_grad():
        for _ in range(2):
            model.train()(
                _moved(scenes, torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
            )
    return model.eval()


def test_seed_features_are_invariant_and_votes_equivariant_under_so3_and_translation():
    model, scenes = _trained_model(), _scenes()
    eye, zero = torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        pos, feat, vote, axis, index = model.seeds(_moved(scenes, eye, zero))
        for _ in range(2):
            rot = random_rotation("so3", gen).double()
            shift = torch.randn(3, generator=gen, dtype=torch.float64) * 3
            pos2, feat2, vote2, axis2, index2 = model.seeds(_moved(scenes, rot, shift))
            assert torch.equal(index, index2)  # the same seeds (FPS and grouping see distances only)
            assert (feat2 - feat).abs().max() <= 1e-9 * feat.abs().max()
            assert (vote @ rot.T + shift - vote2).abs().max() < 1e-8
            assert (axis @ rot.T - axis2).abs().max() < 1e-8  # as the votes; a direction: no shift
            assert (pos @ rot.T + shift - pos2).abs().max() < 1e-10
    # the votes are not trivially the seeds: the model moves them
    assert (vote - pos).norm(dim=-1).mean() > 1e-3


def test_boxes_turn_with_the_scene_about_the_vertical():
    model, scenes = _trained_model(), _scenes()
    eye, zero = torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    angle, shift = 0.9, torch.tensor([1.5, -2.0, 0.3], dtype=torch.float64)
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    with torch.no_grad():
        a = model(_moved(scenes, eye, zero))
        b = model(_moved(scenes, rot, shift))
        boxes_a = model.decode(a, score_threshold=0.0)
        boxes_b = model.decode(b, score_threshold=0.0)
    assert (a["center"] @ rot.T + shift - b["center"]).abs().max() < 1e-8
    assert torch.allclose(a["objectness_logits"], b["objectness_logits"], atol=1e-8)
    for da, db in zip(boxes_a, boxes_b, strict=True):
        assert len(da["boxes"]) == len(db["boxes"]) > 0
        assert torch.allclose(da["scores"], db["scores"], atol=1e-8)
        assert torch.allclose(da["boxes"][:, :3] @ rot.T + shift, db["boxes"][:, :3], atol=1e-8)
        assert torch.allclose(da["boxes"][:, 3:6], db["boxes"][:, 3:6], atol=1e-8)
        turn = (
            torch.remainder(db["boxes"][:, 6] - da["boxes"][:, 6] - angle + math.pi / 2, math.pi)
            - math.pi / 2
        )
        assert turn.abs().max() < 1e-6  # yaw turns with the scene (boxes are defined modulo a half turn)


def test_outputs_do_not_depend_on_point_order():
    model, scenes = _trained_model(), _scenes()
    eye, zero = torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    shuffled = []
    for s in scenes:
        perm = torch.randperm(s.num_nodes, generator=gen)
        t = s.clone()
        for key in ("pos", "semantic", "instance"):
            t[key] = s[key][perm]
        shuffled.append(t)
    with torch.no_grad():
        pos, feat, vote, _, _ = model.seeds(_moved(scenes, eye, zero))
        pos2, feat2, vote2, _, _ = model.seeds(_moved(shuffled, eye, zero))
    assert torch.allclose(pos, pos2) and torch.allclose(feat, feat2, atol=1e-10)
    assert torch.allclose(vote, vote2, atol=1e-10)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="sa_widht"):
        VNDetector({"sa_widht": [[8]]})
    with pytest.raises(ValueError, match="'heading_frame' must be one of"):
        VNDetector({"heading_frame": "learnt"})
    with pytest.raises(ValueError, match="'sa_k' has 1 levels"):
        VNDetector({"sa_k": [16]})
    with pytest.raises(ValueError, match=r"'eval_proposals' \(512\) exceeds the 256 seeds"):
        VNDetector({"eval_proposals": 512})
    with pytest.raises(ValueError, match="mean_sizes"):
        VNDetector({"num_classes": 2, "mean_sizes": [[1.0, 1.0, 1.0]]})


def test_train_three_steps_evaluate_every_protocol_and_detect(tmp_path):
    overrides = [
        "train.max_steps=3",
        "train.batch_size=2",
        "data.num_scenes=4",
        "data.val_scenes=2",
        "data.num_points=1024",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"train.out_dir={tmp_path / 'run'}",
        *(f"model.{k}={json.dumps(v)}" for k, v in TINY.items()),
        "model.eval_proposals=48",
    ]
    result = runner.invoke(app, ["train", str(CONFIG), *(a for o in overrides for a in ("-s", o))])
    assert result.exit_code == 0, result.output
    last = tmp_path / "run" / "last.pt"
    result = runner.invoke(
        app, ["evaluate", "--model", str(last), "--protocol", "all", "--scenes", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(metrics) == list(PROTOCOLS)
    for m in metrics.values():
        assert 0.0 <= m["map@0.25"] <= 1.0 and 0.0 <= m["map@0.5"] <= 1.0, m
    scan = tmp_path / "scan.npy"
    np.save(scan, make_scene(0, "test", 0, num_points=1024).pos.numpy())
    out = tmp_path / "boxes.json"
    result = runner.invoke(
        app, ["detect", str(scan), "--model", str(last), "-o", str(out), "--score-threshold", "0"]
    )
    assert result.exit_code == 0, result.output
    boxes = json.loads(out.read_text())["boxes"]
    assert boxes and set(boxes[0]) == {"class", "score", "centre", "size", "yaw"}


def test_axis_loss_and_learned_frame_by_hand():
    """Axes along a box's yaw (either sign) cost 0, across it 2; the head's frame is their mean orientation."""
    yaw = 0.4
    gt = [torch.tensor([[0.0, 0.0, 0.5, 1.0, 2.0, 1.0, yaw]])]
    along = torch.tensor([math.cos(yaw), math.sin(yaw), 0.7])
    across = torch.tensor([-math.sin(yaw), math.cos(yaw), 0.0])
    inst = torch.tensor([[0, 0, -1]])  # the background seed's axis does not count
    axes = torch.stack([along * 2.0, -along, across])[None]
    assert float(frame_axis_loss(axes, inst, gt)) < 1e-6
    assert abs(float(frame_axis_loss(torch.stack([across, across, along])[None], inst, gt)) - 2.0) < 1e-6
    # the frame of grouped axes: yaw modulo a half turn, whatever their lengths and signs
    grouped = torch.stack([along * 3, -along * 0.1, along])[None, None]  # [B=1, P=1, k=3, 3]
    phi = horizontal_frame(grouped, torch.zeros(1, 1, 3), torch.ones(1, 1, 3, dtype=torch.bool))
    assert abs(float(torch.remainder(phi - yaw + math.pi / 2, math.pi) - math.pi / 2)) < 1e-6
