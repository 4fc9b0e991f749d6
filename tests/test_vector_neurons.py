"""Vector-neuron layers are exactly SO(3)-equivariant; VN-DGCNN's logits are invariant."""

from __future__ import annotations

import pytest
import torch
from helpers import moved_batch, procedural_shapes
from torch_geometric.data import Batch

from geo3d.data.transforms import random_rotation
from geo3d.models.vn_dgcnn import VNDGCNN
from geo3d.nn.vector_neurons import (
    VNBatchNorm,
    VNBatchRMSNorm,
    VNInvariant,
    VNLeakyReLU,
    VNLinear,
    VNLinearBNLeakyReLU,
    VNMaxPool,
    vn_mean_pool,
)

C = 8


def _rotate(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    return x @ rot.T


LAYERS = {
    "linear": lambda: VNLinear(C, 5),
    "leaky_relu": lambda: VNLeakyReLU(C),
    "leaky_relu_shared": lambda: VNLeakyReLU(C, share_nonlinearity=True, negative_slope=0.0),
    "batch_norm": lambda: VNBatchNorm(C),
    "batch_rms_norm": lambda: VNBatchRMSNorm(C),
    "block_rms": lambda: VNLinearBNLeakyReLU(C, 6, norm="rms"),
    "block": lambda: VNLinearBNLeakyReLU(C, 6),
    "max_pool": lambda: VNMaxPool(C),
    "mean_pool": lambda: vn_mean_pool,
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("training", [False, True])
def test_vn_layers_are_equivariant(name, training):
    layer = LAYERS[name]()
    if isinstance(layer, torch.nn.Module):
        layer.train(training)
    x = torch.randn(4, 16, C, 3)  # [batch, points, channels, xyz]
    rot = random_rotation("so3", torch.Generator().manual_seed(3))
    out = layer(x)
    assert (layer(_rotate(x, rot)) - _rotate(out, rot)).abs().max() < 1e-5
    if "pool" in name:
        assert out.shape == (4, C, 3)


def test_vn_leaky_relu_is_the_vector_relu():
    """Where <x, d> < 0 the component along d is removed (negative_slope 0); elsewhere x passes."""
    layer = VNLeakyReLU(2, negative_slope=0.0)
    with torch.no_grad():
        layer.map_to_dir.weight.copy_(torch.eye(2))  # d = x: <x, d> >= 0, so the identity
        x = torch.randn(5, 2, 3)
        assert torch.allclose(layer(x), x)
        layer.map_to_dir.weight.copy_(-torch.eye(2))  # d = -x: x minus its projection on x = 0
        assert layer(x).abs().max() < 1e-5


def test_vn_max_pool_picks_a_member_along_any_leading_dim():
    pool = VNMaxPool(C)
    x = torch.randn(3, 7, 5, C, 3)
    out = pool(x, dim=1)
    assert out.shape == (3, 5, C, 3)
    # every output vector is one of the pooled inputs
    assert ((x - out.unsqueeze(1)).abs().sum(-1) < 1e-7).any(dim=1).all()
    with pytest.raises(ValueError, match="leading dim"):
        pool(x, dim=-2)
    with pytest.raises(ValueError, match=r"expected features \[..., 8, 3\]"):
        pool(torch.randn(3, 4, 3))


@pytest.mark.parametrize("normalize_frame", [False, True])
def test_vn_invariant_features_are_invariant_and_frames_equivariant(normalize_frame):
    layer = VNInvariant(C, normalize_frame=normalize_frame).eval()
    x = torch.randn(6, 10, C, 3)
    rot = random_rotation("so3", torch.Generator().manual_seed(4))
    inv, frame = layer(x)
    inv_r, frame_r = layer(_rotate(x, rot))
    assert inv.shape == (6, 10, C, 3) and frame.shape == (6, 10, 3, 3)
    assert (inv_r - inv).abs().max() < 1e-5
    assert (frame_r - _rotate(frame, rot)).abs().max() < 1e-5
    if normalize_frame:  # a proper orthonormal frame
        eye = torch.eye(3).expand(6, 10, 3, 3)
        assert torch.allclose(frame @ frame.transpose(-1, -2), eye, atol=1e-4)
        assert torch.allclose(torch.linalg.det(frame), torch.ones(6, 10), atol=1e-4)


def _warm_batch_norm(model: torch.nn.Module, batch) -> None:
    """A few training-mode passes so that eval-mode BatchNorm uses realistic statistics."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(batch)
    model.eval()


def test_vn_dgcnn_is_rotation_translation_and_permutation_invariant():
    shapes = procedural_shapes(6)
    model = VNDGCNN({"k": 8, "widths": [8, 8], "emb": 16, "head": [32]})
    _warm_batch_norm(model, Batch.from_data_list(shapes))
    ref = model(Batch.from_data_list(shapes))
    assert ref.shape == (6, 16) and ref.std() > 1e-2  # not trivially constant
    assert (model(moved_batch(shapes, 1)) - ref).abs().max() < 1e-4
    assert (model(moved_batch(shapes, 2, rotate=False)) - ref).abs().max() < 1e-5


def test_vn_dgcnn_config_is_checked_and_gradients_flow():
    with pytest.raises(ValueError, match=r"unknown keys \['widht'\]"):
        VNDGCNN({"widht": [8]})
    with pytest.raises(ValueError, match="'pooling' must be one of"):
        VNDGCNN({"pooling": "sum"})
    model = VNDGCNN({"k": 6, "widths": [6], "emb": 8, "head": [16], "pooling": "mean"}).train()
    model(Batch.from_data_list(procedural_shapes(3, 64))).logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_rms_norm_keeps_short_vectors_short():
    """VN batch norm maps a 1e-4 vector to O(1) length (gradient ~1e4); the RMS norm keeps it 1e-4 of the rest."""
    x = torch.randn(64, 2, 3)
    x[0] *= 1e-4
    x.requires_grad_(True)
    out = VNBatchRMSNorm(2).train()(x)
    ratio = out[0].norm(dim=-1) / out[1:].norm(dim=-1).mean(0)
    assert bool((ratio < 1e-3).all())
    out.sum().backward()
    assert float(x.grad.abs().max()) < 10.0
    bn = VNBatchNorm(2).train()(x.detach())
    assert float(bn[0].norm(dim=-1).min()) > 1e-2  # the paper's norm blows it up
    norm = VNBatchRMSNorm(2)
    norm.train()(x.detach())
    norm.eval()
    assert torch.allclose(norm(x.detach()), x.detach() * (1 / torch.sqrt(norm.running_sq + 1e-5))[:, None])
    with pytest.raises(ValueError, match="norm must be one of"):
        VNLinearBNLeakyReLU(2, 2, norm="layer")
