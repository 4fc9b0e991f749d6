"""EQGAT-diff: equivariance of the denoiser, the diffusion maths, loss and sampler."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3
from torch_geometric.data import Batch, Data

from geo3d.diffusion.categorical import noised_probs, posterior_probs
from geo3d.diffusion.eqgat_diff import EQGATDiffusion
from geo3d.diffusion.schedules import cosine_alpha_bar, sample_timesteps, snr_weight
from geo3d.graph.fully_connected import fully_connected_edges

PRIORS = {
    "atoms": [0.5, 0, 0.35, 0.06, 0.08, 0.01] + [0] * 10,
    "charges": [0, 0.01, 0.98, 0.01, 0, 0],
    "bonds": [0.88, 0.1, 0.01, 0.01, 0.0],
    "num_atoms": [0, 0, 0, 1, 1, 1, 1],
}
SMALL = {"num_layers": 3, "s_dim": 32, "v_dim": 8, "e_dim": 8}


def _model(dtype=torch.float64):
    return EQGATDiffusion({"denoiser": SMALL, "priors": PRIORS, "timesteps": 50}).to(dtype)


def _inputs(counts, dtype=torch.float64):
    ptr = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()])
    n = int(ptr[-1])
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    edge_index, reverse = fully_connected_edges(ptr)
    pos = torch.randn(n, 3, dtype=dtype)
    pos = pos - torch.zeros(len(counts), 3, dtype=dtype).index_add_(0, batch, pos)[batch] / torch.tensor(
        counts, dtype=dtype
    )[batch].unsqueeze(-1)
    atoms = torch.nn.functional.one_hot(torch.randint(0, 16, (n,)), 16).to(dtype)
    charges = torch.nn.functional.one_hot(torch.randint(0, 6, (n,)), 6).to(dtype)
    up = edge_index[0] < edge_index[1]
    b = torch.randint(0, 5, (edge_index.shape[1],))
    b[~up] = 0
    b[reverse[up]] = b[up]
    bonds = torch.nn.functional.one_hot(b, 5).to(dtype)
    t = torch.rand(len(counts), dtype=dtype)
    return atoms, charges, pos, bonds, t, edge_index, reverse, batch, len(counts)


def test_fully_connected_edges_and_reverse():
    ptr = torch.tensor([0, 3, 3, 4, 8])  # includes an empty and a single-atom graph
    edge_index, reverse = fully_connected_edges(ptr)
    assert edge_index.shape[1] == 3 * 2 + 0 + 0 + 4 * 3
    assert torch.equal(edge_index[:, reverse], edge_index.flip(0))
    graph = torch.repeat_interleave(torch.arange(4), ptr[1:] - ptr[:-1])
    assert torch.equal(graph[edge_index[0]], graph[edge_index[1]])
    assert not bool((edge_index[0] == edge_index[1]).any())
    keys = edge_index[1] * 8 + edge_index[0]
    assert bool((keys[1:] > keys[:-1]).all())  # sorted by (receiver, sender)


@pytest.mark.parametrize("reflect", [False, True])
def test_denoiser_is_e3_equivariant(reflect):
    model = _model()
    atoms, charges, pos, bonds, t, ei, rev, batch, nb = _inputs([5, 7])
    out = model.denoiser(atoms, charges, pos, bonds, t, ei, rev, batch, nb)
    rot = o3.rand_matrix(dtype=torch.float64)
    if reflect:
        rot = -rot
    shift = torch.randn(3, dtype=torch.float64)
    # The denoiser works on centred coordinates (the diffusion keeps them centred), so a
    # translation is checked on the centred input: the output must not move.
    out_r = model.denoiser(atoms, charges, pos @ rot.T, bonds, t, ei, rev, batch, nb)
    assert torch.allclose(out_r["pos"], out["pos"] @ rot.T, atol=1e-9)
    for key in ("atom_logits", "charge_logits", "bond_logits"):
        assert torch.allclose(out_r[key], out[key], atol=1e-9), key
    out_t = model.denoiser(atoms, charges, pos + shift, bonds, t, ei, rev, batch, nb)
    assert not torch.allclose(out_t["pos"], out["pos"] + shift)  # invariants see absolute norms


def test_sampler_output_is_translation_invariant_through_centering():
    model = _model()
    atoms, charges, pos, bonds, t, ei, rev, batch, nb = _inputs([6])
    out = model.denoiser(atoms, charges, pos, bonds, t, ei, rev, batch, nb)
    assert torch.allclose(out["pos"].mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_denoiser_is_permutation_equivariant():
    model = _model()
    n = 7
    atoms, charges, pos, bonds, t, ei, rev, batch, nb = _inputs([n])
    out = model.denoiser(atoms, charges, pos, bonds, t, ei, rev, batch, nb)
    perm = torch.randperm(n)

    def dense(values):
        m = torch.zeros(n, n, values.shape[-1], dtype=values.dtype)
        m[ei[1], ei[0]] = values
        return m

    bonds_p = dense(bonds)[perm][:, perm][ei[1], ei[0]]
    out_p = model.denoiser(atoms[perm], charges[perm], pos[perm], bonds_p, t, ei, rev, batch, nb)
    assert torch.allclose(out_p["pos"], out["pos"][perm], atol=1e-10)
    assert torch.allclose(out_p["atom_logits"], out["atom_logits"][perm], atol=1e-10)
    assert torch.allclose(out_p["charge_logits"], out["charge_logits"][perm], atol=1e-10)
    assert torch.allclose(dense(out_p["bond_logits"]), dense(out["bond_logits"])[perm][:, perm], atol=1e-10)
    # Bond logits are symmetric in (i, j).
    assert torch.allclose(out["bond_logits"], out["bond_logits"][rev], atol=1e-12)


def test_schedule_and_weighting():
    abar = cosine_alpha_bar(500, nu=1.0)
    assert abar[0] == 1.0 and bool((abar[1:] < abar[:-1]).all())
    assert float(abar[-1]) < 1e-3 and float(abar[1]) > 0.999
    slow = cosine_alpha_bar(500, nu=2.5)
    assert bool((slow[1:-1] >= abar[1:-1]).all())  # nu > 1 keeps the modality cleaner for longer
    w = snr_weight(abar)
    assert float(w[1]) == 1.5 and float(w[-1]) == 0.05
    mid = 300
    expected = float(abar[mid] / (1 - abar[mid]))
    assert abs(float(w[mid]) - min(max(expected, 0.05), 1.5)) < 1e-12


def test_timestep_draw_follows_its_beta_law():
    # beta = 1 is the old uniform draw, same stream: seeded runs from before still reproduce.
    uniform = sample_timesteps(64, 500, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(uniform, torch.randint(1, 501, (64,), generator=torch.Generator().manual_seed(3)))
    t = sample_timesteps(200_000, 500, 2.0, torch.Generator().manual_seed(0))
    assert int(t.min()) == 1 and int(t.max()) <= 500
    # Beta(1, 2): P(s <= x) = 1 - (1 - x)^2, so half of the draws fall below 1 - 1/sqrt(2) = 0.293.
    for x, p in [(0.1, 0.19), (0.293, 0.5), (0.5, 0.75), (0.9, 0.99)]:
        assert abs(float((t <= round(x * 500)).double().mean()) - p) < 0.005
    with pytest.raises(ValueError, match="timestep beta"):
        sample_timesteps(4, 500, 0.0)
    model = EQGATDiffusion({"denoiser": SMALL, "priors": PRIORS, "timesteps": 50, "timestep_beta": 3.0})
    loss, _ = model.loss(_molecules(), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_categorical_posterior_is_bayes_rule():
    """Check the closed form against explicit transition matrices."""
    prior = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    a_t, a_s = 0.3, 0.7
    k = 3
    eye = torch.eye(k, dtype=torch.float64)
    q_bar_s = a_s * eye + (1 - a_s) * prior  # rows: x0, cols: x_s
    q_ts = (a_t / a_s) * eye + (1 - a_t / a_s) * prior  # rows: x_s, cols: x_t
    p_x0 = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]], dtype=torch.float64)
    x_t = torch.tensor([1, 2])
    got = posterior_probs(x_t, p_x0, torch.tensor(a_t), torch.tensor(a_s), prior)
    for row in range(2):
        expected = torch.zeros(k, dtype=torch.float64)
        for x0 in range(k):
            joint = q_bar_s[x0] * q_ts[:, x_t[row]]
            expected += p_x0[row, x0] * joint / joint.sum()
        assert torch.allclose(got[row], expected)
    # Marginal consistency: q(x_t | x0) from the closed form equals the matrix product.
    q_bar_t = a_t * eye + (1 - a_t) * prior
    assert torch.allclose(noised_probs(torch.tensor([0, 1, 2]), torch.full((3,), a_t), prior), q_bar_t)
    assert torch.allclose(q_bar_s @ q_ts, q_bar_t)


def _molecules():
    # ethanol-like and water-like toy molecules with bonds in both directions
    m1 = Data(
        pos=torch.randn(4, 3),
        atom_type=torch.tensor([2, 2, 4, 0]),
        charge=torch.tensor([0, 0, 0, 0]),
        edge_index=torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]]),
        bond_type=torch.tensor([1, 1, 1, 1, 1, 1]),
        num_nodes=4,
    )
    m2 = Data(
        pos=torch.randn(3, 3),
        atom_type=torch.tensor([4, 0, 0]),
        charge=torch.tensor([0, 0, 1]),
        edge_index=torch.tensor([[0, 1, 0, 2], [1, 0, 2, 0]]),
        bond_type=torch.tensor([2, 2, 1, 1]),
        num_nodes=3,
    )
    return Batch.from_data_list([m1, m2])


def test_bond_labels_cover_every_pair():
    model = _model(torch.float32)
    batch = _molecules()
    ei, _ = fully_connected_edges(batch.ptr)
    labels = model.bond_labels(batch, ei)
    dense = torch.zeros(7, 7, dtype=torch.long)
    dense[ei[1], ei[0]] = labels
    assert dense[0, 1] == 1 and dense[1, 0] == 1 and dense[4, 5] == 2 and dense[6, 4] == 1
    assert int((labels > 0).sum()) == batch.edge_index.shape[1]


def test_loss_backward_and_sampler_shapes():
    model = _model(torch.float32)
    loss, parts = model.loss(_molecules(), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"pos", "atoms", "charges", "bonds"}
    assert all(p.grad is not None for p in model.denoiser.parameters() if p.requires_grad)
    for sampler, steps in [("ancestral", None), ("fast", 5)]:
        mols = model.sample(3, steps=steps, sampler=sampler, generator=torch.Generator().manual_seed(1))
        assert len(mols) == 3
        for m in mols:
            n = m["atom_type"].shape[0]
            assert 3 <= n <= 6  # drawn from the histogram's support
            assert torch.equal(m["bonds"], m["bonds"].T) and not bool(m["bonds"].diagonal().any())
            assert torch.allclose(m["pos"].mean(0), torch.zeros(3), atol=1e-5)
            assert bool((m["charge"] >= -2).all() and (m["charge"] <= 3).all())
            # Elements with zero prior mass are never sampled.
            assert bool((torch.tensor(PRIORS["atoms"])[m["atom_type"]] > 0).all())
    fixed = model.sample(2, num_atoms=5, steps=3)
    assert [m["atom_type"].shape[0] for m in fixed] == [5, 5]
    with pytest.raises(ValueError, match="steps must be"):
        model.sample(1, steps=0)
    with pytest.raises(ValueError, match="unknown keys"):
        EQGATDiffusion({"priors": PRIORS, "timestep": 10})


def test_factored_edge_mlp_equals_the_concatenated_one():
    from geo3d.nn.eqgat import EQGATLayer

    layer = EQGATLayer(8, 4, 3).double()
    n, e = 5, 12
    s = torch.randn(n, 8, dtype=torch.float64)
    dist, dot = torch.rand(e, 1, dtype=torch.float64), torch.randn(e, 1, dtype=torch.float64)
    feats = torch.randn(e, 3, dtype=torch.float64)
    norm_p = torch.rand(n, 1, dtype=torch.float64)
    i, j = torch.randint(0, n, (e,)), torch.randint(0, n, (e,))
    fast = layer._edge_hidden(s, dist, dot, feats, norm_p, i, j)
    naive = layer.edge_mlp[0](torch.cat([s[i], s[j], dist, dot, feats, norm_p[i], norm_p[j]], dim=-1))
    assert torch.allclose(fast, naive, atol=1e-12)


def test_shipped_eqgat_qm9_loads_and_samples():
    import geo3d
    from geo3d.registry import describe_shipped

    model = geo3d.load_model("eqgat-qm9")
    assert model.geo3d_checkpoint["task"] == "molecule-generation"
    assert model.config["self_condition"]  # shipped since issue 20: feeds each step its last prediction
    # QM9 has only H, C, N, O, F: the priors shipped in the config say so.
    atoms = torch.tensor(model.geo3d_checkpoint["config"]["priors"]["atoms"])
    assert set(atoms.nonzero().flatten().tolist()) == {0, 2, 3, 4, 5}
    (mol,) = model.sample(1, num_atoms=9, steps=3, sampler="fast", generator=torch.Generator().manual_seed(0))
    assert mol["atom_type"].shape == (9,) and set(mol["atom_type"].tolist()) <= {0, 2, 3, 4, 5}
    rows = {r["name"]: r for r in describe_shipped()}
    assert rows["eqgat-qm9"]["params"] > 100_000 and rows["eqgat-qm9"]["headline"].startswith(
        "mol_stability="
    )


def _self_conditioned(plain: EQGATDiffusion, random_cond: bool) -> EQGATDiffusion:
    """``plain``'s weights in a self-conditioned model; its new inputs zero or (``random_cond``) random."""
    model = EQGATDiffusion({**plain.config, "self_condition": True}).to(torch.float64)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == model.warm_start_new_parameters() and not unexpected
    if random_cond:
        for lin in (model.denoiser.cond_atom, model.denoiser.cond_bond):
            torch.nn.init.normal_(lin.weight)
            torch.nn.init.normal_(lin.bias)
    return model


@pytest.mark.parametrize("reflect", [False, True])
def test_self_conditioned_denoiser_is_e3_equivariant(reflect):
    model = _self_conditioned(_model(), random_cond=True)
    atoms, charges, pos, bonds, t, ei, rev, batch, nb = _inputs([5, 7])
    args = (bonds, t, ei, rev, batch, nb)
    cond = model.denoiser(atoms, charges, pos, *args)  # no earlier prediction yet
    out = model.denoiser(atoms, charges, pos, *args, cond=cond)
    rot = o3.rand_matrix(dtype=torch.float64) * (-1 if reflect else 1)
    cond_r = {**cond, "pos": cond["pos"] @ rot.T}
    out_r = model.denoiser(atoms, charges, pos @ rot.T, *args, cond=cond_r)
    assert torch.allclose(out_r["pos"], out["pos"] @ rot.T, atol=1e-9)
    for key in ("atom_logits", "charge_logits", "bond_logits"):
        assert torch.allclose(out_r[key], out[key], atol=1e-9), key
    assert torch.allclose(out["bond_logits"], out["bond_logits"][rev], atol=1e-12)
    # The condition is used: another earlier prediction gives another output.
    moved = model.denoiser(atoms, charges, pos, *args, cond={**cond, "pos": cond["pos"] * 1.5})
    assert not torch.allclose(moved["pos"], out["pos"])


def test_self_conditioning_starts_as_the_plain_model():
    """Zero-initialised condition inputs: the same loss, outputs and samples as the model it came from,
    so a warm start with ``self_condition: true`` begins where the checkpoint was."""
    plain = _model()
    model = _self_conditioned(plain, random_cond=False)
    atoms, charges, pos, bonds, t, ei, rev, batch, nb = _inputs([4, 6])
    args = (atoms, charges, pos, bonds, t, ei, rev, batch, nb)
    ref = plain.denoiser(*args)
    out = model.denoiser(*args, cond=model.denoiser(*args))
    for key in ref:
        assert torch.allclose(out[key], ref[key], atol=1e-12), key
    with pytest.raises(ValueError, match="without self_condition"):
        plain.denoiser(*args, cond=ref)
    mols = [m.sample(3, steps=4, generator=torch.Generator().manual_seed(5)) for m in (plain, model.double())]
    for a, b in zip(*mols, strict=True):
        assert torch.equal(a["atom_type"], b["atom_type"]) and torch.equal(a["bonds"], b["bonds"])
        assert torch.allclose(a["pos"], b["pos"], atol=1e-6)
    batch_ = _molecules()
    plain32, model32 = plain.float(), model.float()
    for seed in range(4):  # the condition draw follows every noise draw: the same noised batch
        la, _ = plain32.loss(batch_, torch.Generator().manual_seed(seed))
        lb, _ = model32.loss(batch_, torch.Generator().manual_seed(seed))
        assert torch.allclose(la, lb, atol=1e-6)


def test_self_conditioned_loss_trains_the_condition_inputs():
    model = EQGATDiffusion({"denoiser": SMALL, "priors": PRIORS, "timesteps": 50, "self_condition": True})
    grads = []
    for seed in range(8):  # about half the batches condition on a first, gradient-free prediction
        model.zero_grad()
        loss, _ = model.loss(_molecules(), torch.Generator().manual_seed(seed))
        loss.backward()
        grads.append(float(model.denoiser.cond_atom.weight.grad.abs().sum()))
    used = [g > 0 for g in grads]
    assert any(used) and not all(used), grads
