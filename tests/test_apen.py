"""APEN: exact piecewise equivariance for a given partition, global invariance and
permutation equivariance with predicted partitions, the equivariance error as the
partition concentrates, the EM pieces, config errors and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.data import Batch, Data

from geo3d.models.apen import APEN
from geo3d.models.apen_loss import apen_loss
from geo3d.nn.frame_averaging import part_frames
from geo3d.nn.partition import assign_parts, farthest_point_fill, gmm_em, merge_close_centres
from geo3d.registry import build_model

SMALL = {
    "num_classes": 5,
    "num_scene_classes": 3,
    "point_widths": [16, 24, 32],
    "head_widths": [32, 24],
    "inv_channels": [4, 4],
    "vec_channels": [3, 3],
    "variances": [0.01, 0.02],
    "em_iters": 8,
    "knn": 6,
}
SCALES = ((0.5, 0.3, 0.15), (0.45, 0.25, 0.1), (0.4, 0.28, 0.12), (0.55, 0.3, 0.18))


def rotation(gen: torch.Generator, reflect: bool = False) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    if reflect:
        q = q @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    return q


def scene(gen: torch.Generator, num_objects: int = 4, n: int = 80, spacing: float = 5.0):
    """Well-separated anisotropic blobs (distinct axis scales: stable PCA frames): pos, part, normals."""
    pos, part = [], []
    for j in range(num_objects):
        x = torch.randn(n, 3, generator=gen, dtype=torch.float64) * torch.tensor(SCALES[j % 4])
        angle = 2 * math.pi * j / num_objects
        pos.append(x @ rotation(gen).T + spacing * torch.tensor([math.cos(angle), math.sin(angle), 0.0]))
        part.append(torch.full((n,), j))
    normal = torch.nn.functional.normalize(
        torch.randn(num_objects * n, 3, generator=gen, dtype=torch.float64)
    )
    return torch.cat(pos), torch.cat(part), normal


def move_parts(pos, normal, part, gen, reflect=False, shift=1.0):
    """A random rigid motion per part, about the part's own centroid: new pos, normals and the motions."""
    new_pos, new_normal, motions = pos.clone(), normal.clone(), []
    for j in range(int(part.max()) + 1):
        sel = part == j
        rot = rotation(gen, reflect)
        c = pos[sel].mean(0)
        t = shift * torch.randn(3, generator=gen, dtype=torch.float64)
        new_pos[sel] = (pos[sel] - c) @ rot.T + c + t
        new_normal[sel] = normal[sel] @ rot.T
        motions.append((rot, c, t))
    return new_pos, new_normal, motions


def moved_vectors(v, part, motions, translate=True):
    out = v.clone()
    for j, (rot, c, t) in enumerate(motions):
        sel = part == j
        r = rot.to(v.dtype)
        out[sel] = ((v[sel] - c.to(v.dtype)) @ r.T + (c + t).to(v.dtype)) if translate else v[sel] @ r.T
    return out


def data(pos, normal=None, dtype=torch.float32):
    d = Data(pos=pos.to(dtype))
    if normal is not None:
        d.normal = normal.to(dtype)
    return Batch.from_data_list([d])


@pytest.mark.parametrize("group,reflect", [("SE3", False), ("E3", True)])
def test_exact_piecewise_equivariance_given_partition(group, reflect):
    gen = torch.Generator().manual_seed(1)
    pos, part, normal = scene(gen)
    model = APEN({**SMALL, "group": group, "use_normals": True}).eval()
    moved, moved_normal, motions = move_parts(pos, normal, part, gen, reflect=reflect)
    with torch.no_grad():
        a = model(data(pos, normal), partition=part)
        b = model(data(moved, moved_normal), partition=part)
    assert torch.equal(a["partition"], part) and torch.equal(b["partition"], part)
    feat_err = (a["feat"] - b["feat"]).abs().max().item()
    logit_err = (a["seg_logits"] - b["seg_logits"]).abs().max().item()
    scene_err = (a["scene_logits"] - b["scene_logits"]).abs().max().item()
    vote_err = max(
        (moved_vectors(va, part, motions) - vb).abs().max().item()
        for va, vb in zip(a["votes"], b["votes"], strict=True)
    )
    print(f"{group}: feat {feat_err:.1e} logits {logit_err:.1e} scene {scene_err:.1e} votes {vote_err:.1e}")
    assert max(feat_err, logit_err, scene_err, vote_err) < 1e-5
    assert a["seg_logits"].abs().max() > 1e-3  # not trivially zero


def test_se3_model_is_not_reflection_invariant():
    gen = torch.Generator().manual_seed(2)
    pos, part, normal = scene(gen)
    model = APEN({**SMALL, "group": "SE3"}).eval()
    moved, _, _ = move_parts(pos, normal, part, gen, reflect=True)
    with torch.no_grad():
        a, b = model(data(pos), partition=part), model(data(moved), partition=part)
    assert (a["seg_logits"] - b["seg_logits"]).abs().max() > 1e-4


def test_frames_move_with_their_part():
    gen = torch.Generator().manual_seed(3)
    pos, part, normal = scene(gen, num_objects=2)
    moved, _, motions = move_parts(pos, normal, part, gen)
    for group, nf in (("SE3", 4), ("E3", 8)):
        c0, f0, ev = part_frames(pos, part, 2, group)
        c1, f1, _ = part_frames(moved, part, 2, group)
        assert f0.shape == (2, nf, 3, 3) and (ev[:, 1:] - ev[:, :-1]).min() > 0.1
        for j, (rot, c, t) in enumerate(motions):
            assert torch.allclose(c1[j], (c0[j] - c) @ rot.T + c + t, atol=1e-12)
            # the frame set is mapped onto itself: every rotated frame is one of the new frames
            rotated = rot @ f0[j]  # [|F|, 3, 3]
            dist = (rotated[:, None] - f1[j][None]).abs().amax((-1, -2))  # [|F|, |F|]
            assert dist.min(1).values.max() < 1e-10
        if group == "SE3":
            assert torch.allclose(torch.linalg.det(f0), torch.ones(2, nf, dtype=torch.float64))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_global_rigid_invariance_with_predicted_partition(dtype, tol):
    gen = torch.Generator().manual_seed(4)
    pos, _, _ = scene(gen, num_objects=3)
    rot, t = rotation(gen), torch.tensor([0.3, -2.0, 1.0], dtype=torch.float64)
    model = APEN({**SMALL, "num_fps_parts": 12, "num_random_parts": 4}).to(dtype).eval()
    with torch.no_grad():
        a = model(data(pos, dtype=dtype), generator=torch.Generator().manual_seed(7))
        b = model(data(pos @ rot.T + t, dtype=dtype), generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(p, q) for p, q in zip(a["partitions"], b["partitions"], strict=True))
    assert int(a["num_parts"][0]) > 1
    assert (a["seg_logits"] - b["seg_logits"]).abs().max() < tol
    assert (a["scene_logits"] - b["scene_logits"]).abs().max() < tol
    r, tt = rot.to(dtype), t.to(dtype)
    for va, vb in zip(a["votes"], b["votes"], strict=True):
        assert (va @ r.T + tt - vb).abs().max() < 10 * tol


def test_permutation_equivariance_and_batch_independence():
    gen = torch.Generator().manual_seed(5)
    pos, _, _ = scene(gen, num_objects=3, n=60)
    other = scene(gen, num_objects=2, n=50)[0]
    # random seeds and Gumbel draws follow the indices, not the points: both off
    model = APEN({**SMALL, "num_fps_parts": 10, "num_random_parts": 0, "sampling": "never"}).eval()
    perm = torch.randperm(len(pos), generator=gen)
    with torch.no_grad():
        a = model(data(pos))
        b = model(data(pos[perm]))
        both = model(Batch.from_data_list([Data(pos=pos.float()), Data(pos=other.float())]))
    assert torch.allclose(a["seg_logits"][perm], b["seg_logits"], atol=1e-5)
    assert torch.allclose(a["votes"][-1][perm], b["votes"][-1], atol=1e-5)
    # same parts (ids may only be relabelled): part co-membership is preserved
    pa, pb = a["partition"][perm], b["partition"]
    assert torch.equal(pa[:, None] == pa[None], pb[:, None] == pb[None])
    # variable-size clouds in one batch: each cloud as if alone
    assert both["seg_logits"].shape == (len(pos) + len(other), 5) and both["scene_logits"].shape == (2, 3)
    assert torch.allclose(both["seg_logits"][: len(pos)], a["seg_logits"], atol=1e-5)


def test_priority_keyed_sampling_follows_the_points_under_reordering():
    """With ``point_priority`` (as ``geo3d detect`` passes it) the random initial parts and the sampled
    assignments are functions of the points: a reordered cloud gives the reordered output. Without it
    the same generator seed gives other parts (the draws follow the indices): the control."""
    from geo3d.apps.detect import point_priority

    gen = torch.Generator().manual_seed(6)
    pos, _, _ = scene(gen, num_objects=3, n=60)
    model = APEN({**SMALL, "num_fps_parts": 3, "num_random_parts": 6, "sampling": "always"}).eval()
    prio = point_priority(pos.float())
    perm = torch.randperm(len(pos), generator=gen)

    def run(idx, priority=True):
        d = Data(pos=pos[idx].float(), **({"point_priority": prio[idx]} if priority else {}))
        with torch.no_grad():
            return model(Batch.from_data_list([d]), generator=torch.Generator().manual_seed(0))

    ident = torch.arange(len(pos))
    a, b = run(ident), run(perm)
    for pa, pb in zip(a["partitions"], b["partitions"], strict=True):
        pa = pa[perm]
        assert torch.equal(pa[:, None] == pa[None], pb[:, None] == pb[None])
    assert torch.allclose(a["seg_logits"][perm], b["seg_logits"], atol=1e-5)
    c, d = run(ident, priority=False), run(perm, priority=False)
    pc, pd = c["partition"][perm], d["partition"]
    assert not torch.equal(pc[:, None] == pc[None], pd[:, None] == pd[None])


def piecewise_error(model, num_objects=4, seeds=(0, 1, 2)):
    """Mean over scenes of the largest logit change under independent rigid motions of the objects,
    with predicted partitions; and the fraction of initial parts that straddle two objects."""
    errs, straddle = [], []
    for s in seeds:
        gen = torch.Generator().manual_seed(100 + s)
        pos, part, normal = scene(gen, num_objects=num_objects, n=60, spacing=4.0)
        moved, _, _ = move_parts(pos, normal, part, gen, shift=0.5)
        with torch.no_grad():
            a = model(data(pos), generator=torch.Generator().manual_seed(s))
            b = model(data(moved), generator=torch.Generator().manual_seed(s))
        errs.append((a["seg_logits"] - b["seg_logits"]).abs().max().item())
        p0 = a["partitions"][0]
        objects_per_part = [len(part[p0 == q].unique()) for q in p0.unique()]
        straddle.append(sum(k > 1 for k in objects_per_part) / len(objects_per_part))
    return sum(errs) / len(errs), sum(straddle) / len(straddle)


def test_equivariance_error_falls_as_partition_concentrates():
    """The paper's bound in words: the error is driven by the chance that a part straddles two
    objects. Random initial parts (seeds follow the points, so the same draw gives the same seeds
    after the motion): more parts, fewer straddling parts, smaller error; and a smaller EM variance
    keeps the mixture from coupling (and merging) objects."""
    torch.manual_seed(0)
    base = {**SMALL, "num_fps_parts": 0, "random_part_min_dist": 0.0}
    model = APEN({**base, "num_random_parts": 1}).eval()
    state = model.state_dict()
    by_parts = {}
    for k in (1, 2, 4, 32):
        m = APEN({**base, "num_random_parts": k}).eval()
        m.load_state_dict(state)
        by_parts[k] = piecewise_error(m)
    by_var = {}
    for var in (16.0, 1.0, 0.01):
        m = APEN({**base, "num_random_parts": 32, "variances": [var, var]}).eval()
        m.load_state_dict(state)
        by_var[var] = piecewise_error(m)[0]
    print("parts -> (error, straddling fraction):", by_parts, " variance -> error:", by_var)
    errors = [by_parts[k][0] for k in (1, 2, 4, 32)]
    assert by_parts[1][1] == 1.0 and by_parts[32][1] == 0.0
    assert errors[0] > 1e-2 and errors[-1] < 1e-5 and errors[0] > errors[1] > errors[-1]
    assert by_var[16.0] > 1e-2 and by_var[0.01] < 1e-5


def test_gmm_recovers_blob_centres():
    gen = torch.Generator().manual_seed(6)
    truth = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 1.0]], dtype=torch.float64)
    y = torch.cat([c + 0.1 * torch.randn(200, 3, generator=gen, dtype=torch.float64) for c in truth])
    batch = torch.zeros(len(y), dtype=torch.long)
    mu, mask, _ = farthest_point_fill(y, batch, y.new_zeros(1, 3, 3), torch.zeros(1, 3, dtype=torch.bool), 3)
    pi = torch.full((1, 3), 1 / 3, dtype=torch.float64)
    mu, pi, mask = gmm_em(y, batch, mu, pi, mask, 0.01, 20, 0.15, 1e-4)
    order = torch.cdist(truth, mu[0]).argmin(1)
    sample_means = y.reshape(3, 200, 3).mean(1)
    assert torch.allclose(mu[0, order], sample_means, atol=1e-6)
    assert torch.allclose(pi[0, order], torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-6)
    slot = assign_parts(y, batch, mu, pi, mask, 0.01)
    assert torch.equal(slot, order.repeat_interleave(200))


def test_merging_and_pruning():
    mu = torch.tensor([[[0.0, 0, 0], [0.01, 0, 0], [1.0, 0, 0], [0.0, 0.2, 0]]], dtype=torch.float64)
    pi = torch.tensor([[0.3, 0.1, 0.4, 0.2]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    new_mu, new_pi, new_mask = merge_close_centres(mu, pi, mask, var=0.01, thr=0.15)  # radius 0.015
    assert new_mask.tolist() == [[True, False, True, True]]
    assert torch.allclose(new_mu[0, 0], torch.tensor([0.0025, 0, 0], dtype=torch.float64))
    assert torch.allclose(new_pi[0], torch.tensor([0.4, 0.0, 0.4, 0.2], dtype=torch.float64))
    # a chain merges pair by pair, closest first, down to one centre when all are close
    chain_mu = torch.tensor([[[0.0, 0, 0], [0.01, 0, 0], [0.02, 0, 0]]], dtype=torch.float64)
    _, chain_pi, chain_mask = merge_close_centres(
        chain_mu,
        torch.full((1, 3), 1 / 3, dtype=torch.float64),
        torch.ones(1, 3, dtype=torch.bool),
        1.0,
        0.15,
    )
    assert int(chain_mask.sum()) == 1 and math.isclose(float(chain_pi.sum()), 1.0)
    # pruning: a centre far from every point ends with no weight and is dropped
    gen = torch.Generator().manual_seed(8)
    y = torch.randn(100, 3, generator=gen, dtype=torch.float64) * 0.1
    batch = torch.zeros(100, dtype=torch.long)
    mu2 = torch.tensor([[[0.0, 0, 0], [50.0, 0, 0]]], dtype=torch.float64)
    pi2 = torch.full((1, 2), 0.5, dtype=torch.float64)
    _, pi3, mask3 = gmm_em(y, batch, mu2, pi2, torch.ones(1, 2, dtype=torch.bool), 0.01, 8, 0.0, 1e-4)
    assert mask3.tolist() == [[True, False]] and pi3[0, 1] == 0.0


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="num_blokcs"):
        APEN({**SMALL, "num_blokcs": 3})
    with pytest.raises(ValueError, match="sampling"):
        APEN({**SMALL, "sampling": "sometimes"})
    with pytest.raises(ValueError, match="group"):
        APEN({**SMALL, "group": "SO3"})
    with pytest.raises(ValueError, match="inv_channels"):
        APEN({**SMALL, "inv_channels": [4, 4, 4]})
    # registered
    assert isinstance(build_model("apen", {**SMALL, "arch": "apen", "num_points": 300}), APEN)
    with pytest.raises(ValueError, match="normal"):
        APEN({**SMALL, "use_normals": True})(data(torch.randn(50, 3)))


def test_backward_gives_finite_gradients_and_loss():
    gen = torch.Generator().manual_seed(9)
    pos, part, normal = scene(gen, num_objects=3, n=50)
    cfg = {**SMALL, "use_normals": True, "num_fps_parts": 8, "num_random_parts": 4, "sampling": "train"}
    model = APEN(cfg).train()
    out = model(data(pos, normal), generator=torch.Generator().manual_seed(0))  # sampled assignments
    centre = torch.stack([pos[part == j].mean(0) for j in range(3)])[part].float()
    losses = apen_loss(out, centre, labels=part)
    assert losses["vote_losses"].shape == (2,)
    assert math.isclose(
        losses["loss"].item(), (losses["vote_loss"] + 0.1 * losses["seg_loss"]).item(), rel_tol=1e-6
    )
    losses["loss"].backward()
    grads = [p.grad for name, p in model.named_parameters() if not name.startswith("scene_head")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    perfect = apen_loss({**out, "votes": [centre, centre]}, centre, labels=None, vote_loss="l1")
    assert float(perfect["loss"]) == 0.0


def test_seeds_for_a_detection_head():
    gen = torch.Generator().manual_seed(10)
    pos, _, _ = scene(gen, num_objects=2, n=60)
    rot = rotation(gen)
    model = APEN({**SMALL, "num_random_parts": 0, "num_fps_parts": 8}).eval()
    with torch.no_grad():
        a = model.seeds(data(pos), 16, generator=torch.Generator().manual_seed(0))
        b = model.seeds(data(pos @ rot.T), 16, generator=torch.Generator().manual_seed(0))
    assert a["seed_pos"].shape == (1, 16, 3) and a["seed_feat"].shape == (1, 16, model.feat_dim)
    assert torch.equal(a["seed_idx"], b["seed_idx"])
    assert torch.allclose(a["seed_feat"], b["seed_feat"], atol=1e-4)
    assert torch.allclose(a["seed_vote"] @ rot.float().T, b["seed_vote"], atol=1e-4)
    with pytest.raises(ValueError, match="seeds"):
        model.seeds(data(pos[:10]), 16)


def test_parts_without_a_frame_stay_invariant():
    """A part of two points (or with a symmetric spread) has no unique PCA frame: it is flagged and
    computed from scalars only, so a rigid motion of the whole cloud still leaves the logits alone."""
    from geo3d.nn.frame_averaging import frame_is_unique

    gen = torch.Generator().manual_seed(8)
    pos, part, _ = scene(gen, num_objects=2, n=40)
    pos = torch.cat([pos, torch.tensor([[9.0, 0.0, 0.0], [9.5, 0.3, 0.1]], dtype=torch.float64)])
    part = torch.cat([part, torch.tensor([2, 2])])
    _, _, evals = part_frames(pos, part, 3, "SE3")
    assert frame_is_unique(evals).tolist() == [True, True, False]
    rot, t = rotation(gen), torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
    model = APEN({**SMALL, "sampling": "never"}).double().eval()
    with torch.no_grad():
        a = model(data(pos, dtype=torch.float64), partition=part)
        b = model(data(pos @ rot.T + t, dtype=torch.float64), partition=part)
    assert (a["seg_logits"] - b["seg_logits"]).abs().max() < 1e-10
    assert (a["vote"] @ rot.T + t - b["vote"]).abs().max() < 1e-10
    assert torch.equal(a["vote"][-2:], pos[-2:])  # no frame, no vote displacement
