"""PaRot: rotation bookkeeping of the siamese module, invariant relation codes, model invariance, training hook."""

from __future__ import annotations

import pytest
import torch
from helpers import moved_batch, moved_batch_and_order, procedural_shapes
from torch_geometric.data import Batch

from geo3d.data.transforms import random_rotation
from geo3d.models.parot import PaRot, PaRotSegmentation, farthest_point_centres
from geo3d.nn.patch_disentangle import (
    PointNetDisentangler,
    SiameseDisentangle,
    VNDisentangler,
    patch_frame,
    random_rotations,
)
from geo3d.nn.patch_relation import inter_relation, intra_relation, nearest

SMALL = {
    "num_patches": 16,
    "k_local": 16,
    "k_global": 8,
    "k_intra": 6,
    "dim": 32,
    "vn_channels": 16,
    "intra_widths": [32, 32],
    "pose_dim": 8,
    "inter_widths": [32],
    "emb": 64,
    "head": [32],
}


def test_random_rotations_are_proper():
    r = random_rotations(50, torch.Generator().manual_seed(0), torch.float64)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(50, 3, 3))
    assert torch.allclose(torch.linalg.det(r), torch.ones(50, dtype=torch.float64))


def test_vn_disentangler_is_exactly_invariant_and_equivariant():
    enc = VNDisentangler(dim=16, channels=8).eval()
    patches = torch.randn(5, 20, 3)
    rot = random_rotation("so3", torch.Generator().manual_seed(1))
    inv, dirs = enc(patches)
    inv_r, dirs_r = enc(patches @ rot.T)
    assert (inv_r - inv).abs().max() < 1e-5
    assert (dirs_r - dirs @ rot.T).abs().max() < 1e-5
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(5, 2), atol=1e-5)


def test_siamese_views_are_mapped_back_to_the_input_pose():
    """With an exactly equivariant encoder forced through the two-view path, both views agree
    with the plain encoding once rotated back: the dir and feat losses vanish (R vs R^T bookkeeping)."""
    enc = VNDisentangler(dim=16, channels=8).eval()  # eval: BatchNorm identical for both views
    enc.equivariant = False  # take the siamese two-rotation path anyway
    siamese = SiameseDisentangle(enc).train()
    patches = torch.randn(7, 20, 3)
    inv, dirs, losses = siamese(patches)
    ref_inv, ref_dirs = enc(patches)
    # Round-off only (features of size ~2, float32 rotations on both views).
    assert (dirs - ref_dirs).abs().max() < 1e-4 and (inv - ref_inv).abs().max() < 1e-4
    assert losses["dir"] < 1e-9 and losses["feat"] < 1e-9
    # The paper's PointNet encoder is not equivariant before training: the losses see it.
    _, _, losses = SiameseDisentangle(PointNetDisentangler(16)).train()(patches)
    assert losses["dir"] > 1e-3 and set(losses) == {"dir", "orth", "feat"}
    assert SiameseDisentangle(PointNetDisentangler(16)).eval()(patches)[2] == {}


def test_relation_codes_are_invariant():
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(2, 10, 3, generator=g)
    frames_l = patch_frame(torch.nn.functional.normalize(torch.randn(2, 10, 2, 3, generator=g), dim=-1))
    frames_g = patch_frame(torch.nn.functional.normalize(torch.randn(2, 10, 2, 3, generator=g), dim=-1))
    nbr = nearest(centres, centres, 4)
    rot = random_rotation("so3", g)
    r = rot.T  # frames' rows rotate as F R^T
    intra = intra_relation(frames_l, centres, nbr)
    inter = inter_relation(frames_l, frames_g, centres)
    assert intra.shape == (2, 10, 4, 16) and inter.shape == (2, 10, 16)
    assert (intra_relation(frames_l @ r, centres @ r, nbr) - intra).abs().max() < 1e-5
    assert (inter_relation(frames_l @ r, frames_g @ r, centres @ r) - inter).abs().max() < 1e-5
    assert torch.equal(nearest(centres @ r, centres @ r, 4), nbr)


def _warmed(config, batch, cls=PaRot) -> PaRot:
    """A model whose eval-mode BatchNorm statistics come from a few training-mode passes."""
    model = cls(config).train()
    with torch.no_grad():
        for _ in range(3):
            model(batch)
    return model.eval()


def test_fps_centres_do_not_depend_on_point_order():
    x = torch.randn(2, 50, 3)
    x = x - x.mean(1, keepdim=True)
    perm = torch.randperm(50)
    a = farthest_point_centres(x, 12, random_start=False)
    b = farthest_point_centres(x[:, perm], 12, random_start=False)
    assert torch.equal(perm[b], a)


def test_parot_with_vn_encoder_is_invariant_by_construction():
    shapes = procedural_shapes(8)
    model = _warmed({**SMALL, "encoder": "vn"}, Batch.from_data_list(shapes))
    ref = model(Batch.from_data_list(shapes))
    assert ref.shape == (8, 16) and ref.std() > 1e-2
    assert model.aux_loss is None and model.aux_terms == {}
    err = (model(moved_batch(shapes, 3)) - ref).abs().max()
    assert err < 1e-4, f"rotation + translation + permutation changed the logits by {err:.2e}"


def test_parot_pointnet_is_translation_and_permutation_invariant_and_rotation_is_measured():
    """The paper's encoder: translations and permutations are exact; rotation invariance is learned,
    so an untrained model is measurably not invariant (trained models: see benchmarks)."""
    shapes = procedural_shapes(8)
    model = _warmed(SMALL, Batch.from_data_list(shapes))
    ref = model(Batch.from_data_list(shapes))
    assert (model(moved_batch(shapes, 4, rotate=False)) - ref).abs().max() < 1e-5
    assert (model(moved_batch(shapes, 5)) - ref).abs().max() > 1e-3


def test_parot_config_is_checked():
    with pytest.raises(ValueError, match=r"unknown keys \['num_patchs'\]"):
        PaRot({"num_patchs": 8})
    with pytest.raises(ValueError, match="'encoder' must be one of"):
        PaRot({"encoder": "gnn"})
    with pytest.raises(ValueError, match=r"'k_global' \(64\) exceeds 'num_patches' \(32\)"):
        PaRot({"num_patches": 32, "k_global": 64})
    with pytest.raises(ValueError, match="'k_intra' must be an integer >= 1"):
        PaRot({"k_intra": 0})
    with pytest.raises(ValueError, match="smaller than num_patches"):
        PaRot(SMALL).eval()(Batch.from_data_list(procedural_shapes(1, points=15)))


def test_training_step_adds_the_aux_loss_and_gives_finite_gradients(tmp_path):
    from pathlib import Path

    from geo3d.train import load_config, make_task

    root = Path(__file__).resolve().parents[1]
    overrides = [f"model.{k}={v}" for k, v in SMALL.items()] + ["data.num_points=64"]
    cfg = load_config(root / "configs/parot_shapes.yaml", overrides)
    task = make_task(cfg)
    model = task.build_model({**task.model_config(None)}).train()
    batch = Batch.from_data_list(procedural_shapes(4, 64))
    loss, parts = task.loss(model, batch, torch.Generator())
    assert model.aux_loss is not None and parts["aux"] == pytest.approx(float(model.aux_loss.detach()))
    assert set(model.aux_terms) == {f"{n}_{s}" for n in ("dir", "orth", "feat") for s in ("local", "global")}
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


SEG_SMALL = {
    **{k: v for k, v in SMALL.items() if k != "head"},
    "k_interp": 4,
    "root_widths": [32],
    "point_widths": [32, 16],
}


def test_parot_segmentation_with_vn_encoder_is_invariant_per_point():
    """Per-point logits move with their points under rotation + translation + permutation (exact with VN)."""
    shapes = procedural_shapes(6)
    model = _warmed(
        {**SEG_SMALL, "encoder": "vn", "head": [16]}, Batch.from_data_list(shapes), PaRotSegmentation
    )
    ref = model(Batch.from_data_list(shapes))
    assert ref.shape == (6 * 128, 50) and ref.std() > 1e-2
    moved, order = moved_batch_and_order(shapes, 7)
    err = (model(moved) - ref[order]).abs().max()
    assert err < 1e-4, f"moving the clouds changed the per-point logits by {err:.2e}"
    # the category input matters: the same cloud read as another category gives other logits
    other = Batch.from_data_list(shapes)
    other.y = (other.y + 1) % 16
    assert (model(other) - ref).abs().max() > 1e-3


def test_parot_segmentation_split_first_layer_equals_the_plain_linear():
    """The pair MLP's first layer applied block-wise before gathering = one Linear on the concatenation."""
    torch.manual_seed(0)
    shapes = procedural_shapes(3)
    model = PaRotSegmentation({**SEG_SMALL, "head": [16]}).eval()
    captured = {}
    model.pair_rest.register_forward_pre_hook(lambda m, inp: captured.update(pair=inp[0]))  # returns None
    batch = Batch.from_data_list(shapes)
    model(batch)
    enc = model.encode(batch)
    shape_code = enc.per_centre.max(dim=1, keepdim=True).values.expand(-1, SEG_SMALL["num_patches"], -1)
    from geo3d.nn.patch_relation import apply_flat, gather_neighbours

    centre = apply_flat(model.root, torch.cat([enc.patch_features, shape_code], -1))
    nbr = nearest(enc.points, enc.centres, 4)
    rel = enc.points.unsqueeze(2) - gather_neighbours(enc.centres, nbr)
    u = torch.nn.functional.normalize(rel, dim=-1).unsqueeze(-1)
    pose = torch.cat(
        [
            rel.norm(dim=-1, keepdim=True),
            (gather_neighbours(enc.local_frames, nbr) @ u).squeeze(-1),
            (gather_neighbours(enc.global_frames, nbr) @ u).squeeze(-1),
        ],
        -1,
    )
    cat = torch.nn.functional.one_hot(batch.y, 16).float()[:, None, None].expand(-1, 128, 4, -1)
    full = torch.cat([gather_neighbours(centre, nbr), apply_flat(model.point_pose, pose), cat], -1)
    expected = model.pair_in(full).reshape(-1, model.pair_in.out_features)
    assert (captured["pair"] - expected).abs().max() < 1e-5


def test_parot_segmentation_trains_through_the_segmentation_task():
    from pathlib import Path

    from geo3d.train import load_config, make_task

    root = Path(__file__).resolve().parents[1]
    overrides = [f"model.{k}={v}" for k, v in SEG_SMALL.items()] + ["data.num_points=64", "model.head=[16]"]
    cfg = load_config(root / "configs/parot_shapes_seg.yaml", overrides)
    task = make_task(cfg)
    model = task.build_model(task.model_config(None)).train()
    batch = Batch.from_data_list(procedural_shapes(4, 64))
    loss, parts = task.loss(model, batch, torch.Generator())
    assert "aux" in parts and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with pytest.raises(ValueError, match=r"unknown keys \['k_interpolate'\]"):
        PaRotSegmentation({"k_interpolate": 3})


@pytest.mark.slow
def test_torchrun_data_parallel_point_cloud_training(tmp_path):
    """PaRot (aux loss read through the DDP wrapper) on two gloo ranks; rank 0 writes the checkpoint."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    sizes = [f"model.{k}={v}" for k, v in SMALL.items()]
    over = [*sizes, "data.num_points=64", "data.per_class=2", "train.epochs=1", "train.batch_size=4"]
    over.append(f"train.out_dir={tmp_path / 'run'}")
    command = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "geo3d.cli", "train"]
    command += [str(root / "configs/parot_shapes.yaml"), *[a for o in over for a in ("-s", o)]]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["extra"]["train_state"]
    # 16 classes x 2 shapes = 32 training shapes, batch 4 per rank, 2 ranks: 4 steps
    assert state["step"] == 4 and state["epoch"] == 1
