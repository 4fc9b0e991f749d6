"""APEN part segmentation on Shapes: logits invariant to an independent motion of every part (true
partition given) and to a global rigid motion (predicted partition, same draws), the vote loss, the
config check, and the train -> evaluate (rest and Articulated shapes) path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch
from typer.testing import CliRunner

from geo3d.cli import app
from geo3d.data.articulated import articulate
from geo3d.data.shapes import CLASS_NAMES, PARTS, make_shape
from geo3d.data.transforms import random_rotation
from geo3d.models.apen_part_seg import APENPartSegmentation, part_centres
from geo3d.train import load_config, make_task
from geo3d.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "num_fps_parts": 8,
    "num_random_parts": 4,
    "variances": [0.004, 0.008],
    "inv_channels": [4, 4],
    "vec_channels": [3, 3],
    "point_widths": [16, 24],
    "head_widths": [24, 16],
    "em_iters": 6,
    "knn": 6,
}
MULTI_PART = [k for k, name in enumerate(CLASS_NAMES) if len(PARTS[name]) > 2]


@torch.no_grad()
def _logits(model: APENPartSegmentation, batch: Batch, **kwargs) -> torch.Tensor:
    return model(batch, **kwargs)


def _model() -> APENPartSegmentation:
    torch.manual_seed(0)
    model = APENPartSegmentation(SMALL).double().eval()
    with torch.no_grad():  # a non-zero category bias, so that it is part of what is compared
        model.category_bias.weight.normal_()
    return model


@pytest.mark.parametrize("label", MULTI_PART[:3])
def test_logits_invariant_to_independent_part_motions_given_the_partition(label):
    rng = np.random.default_rng(label)
    rest = make_shape(label, 256, rng)
    moved, rot, shift = articulate(rest, rng, max_angle=0.8)
    model = _model()
    a, b = Batch.from_data_list([rest]), Batch.from_data_list([moved])
    a.pos = a.pos.double()  # the motion applied in float64 (articulate rounds to float32)
    b.pos = torch.einsum("nij,nj->ni", rot[a.part], a.pos) + shift[a.part]
    assert torch.allclose(b.pos.float(), moved.pos, atol=1e-5)
    assert not torch.allclose(a.pos, b.pos, atol=1e-2)  # the parts did move
    la, lb = _logits(model, a, partition=a.part), _logits(model, b, partition=b.part)
    scale = la.abs().max()
    assert float((la - lb).abs().max() / scale) < 1e-9
    # mutation check: a partition that is not the true one is not invariant
    wrong = torch.zeros_like(a.part)
    assert (
        float((_logits(model, a, partition=wrong) - _logits(model, b, partition=wrong)).abs().max() / scale)
        > 1e-3
    )


def test_global_rigid_motion_with_predicted_parts_and_same_draws():
    rng = np.random.default_rng(3)
    shapes = [make_shape(k, 200, rng) for k in MULTI_PART[:2]]
    batch = Batch.from_data_list(shapes)
    batch.pos = batch.pos.double()
    q = random_rotation("so3", torch.Generator().manual_seed(1), torch.float64)
    turned = batch.clone()
    turned.pos = batch.pos @ q.T + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    model = _model()
    la = _logits(model, batch, generator=torch.Generator().manual_seed(7))
    lb = _logits(model, turned, generator=torch.Generator().manual_seed(7))
    assert float((la - lb).abs().max() / la.abs().max()) < 1e-8


def test_vote_loss_in_training_and_clear_errors():
    rng = np.random.default_rng(0)
    shape = make_shape(MULTI_PART[0], 128, rng)
    batch = Batch.from_data_list([shape, make_shape(MULTI_PART[1], 128, rng)])
    centre = part_centres(batch.pos, batch.part, batch.batch, 50)
    for g in range(2):  # every point's centre is the mean of its own part in its own shape
        for p in batch.part[batch.batch == g].unique():
            sel = (batch.batch == g) & (batch.part == p)
            assert torch.allclose(centre[sel], batch.pos[sel].mean(0).expand(int(sel.sum()), 3), atol=1e-6)
    model = APENPartSegmentation(SMALL).train()
    logits = model(batch)
    assert logits.shape == (256, 50) and model.aux_loss is not None and float(model.aux_loss) > 0
    (torch.nn.functional.cross_entropy(logits, batch.part) + model.aux_loss).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.apen.blocks.parameters())
    model.eval()
    model(batch)
    assert model.aux_loss is None
    del batch.part
    with pytest.raises(ValueError, match="needs the true part ids"):
        model.train()(batch)
    with pytest.raises(ValueError, match="unknown keys \\['variance'\\]"):
        APENPartSegmentation({"variance": [0.1]})
    with pytest.raises(ValueError, match="unknown keys \\['num_classes'\\]"):
        APENPartSegmentation({"num_classes": 4})


def test_train_then_evaluate_on_rest_and_articulated_shapes(tmp_path):
    overrides = ["train.epochs=1", "data.per_class=1", "data.num_points=96", f"train.out_dir={tmp_path}"]
    overrides += [f"model.{k}={json.dumps(v)}" for k, v in SMALL.items()]
    cfg = load_config(ROOT / "configs/apen_shapes_seg.yaml", overrides)
    best = train(make_task(cfg), cfg)
    result = CliRunner().invoke(
        app, ["evaluate", "--model", str(best), "--protocol", "all", "--per-class", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(metrics) == {"z/z", "z/so3", "z/z+articulated", "z/so3+articulated"}
    assert all(0.0 <= m["instance_miou"] <= 1.0 for m in metrics.values())
