"""Valence-aware bond assignment: RDKit's limits, brute-force optimality, and the sampler option."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from rdkit import Chem

from geo3d.data.molecules import ATOM_INDEX, build_mol
from geo3d.diffusion.valence import BOND_ORDER, assign_bonds, bond_order_sums, max_valence


@pytest.mark.parametrize(
    "element, charge, limit",
    [("H", 0, 1), ("C", 0, 4), ("N", 0, 3), ("N", 1, 4), ("O", 0, 2), ("O", -1, 1), ("O", 1, 3),
     ("F", 0, 1), ("S", 0, 6), ("C", -1, 3)],
)  # fmt: skip
def test_max_valence_is_what_rdkit_sanitises(element, charge, limit):
    assert max_valence(ATOM_INDEX[element], charge) == limit


def _limits(atom_type, charge):
    return torch.tensor([max_valence(int(a), int(q)) for a, q in zip(atom_type, charge, strict=True)])


def _brute_force(probs, pairs, limits):
    """Best log-probability over every assignment within the limits (all 4^P of them)."""
    logp = np.log(np.maximum(probs.numpy(), 1e-300))
    best = -np.inf
    for combo in itertools.product(range(probs.shape[1]), repeat=probs.shape[0]):
        sums = bond_order_sums(torch.tensor(combo), pairs, len(limits))
        if bool((sums <= limits).all()):
            best = max(best, sum(logp[e, k] for e, k in enumerate(combo)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_assignment_is_the_best_one_within_the_limits(seed):
    g = torch.Generator().manual_seed(seed)
    n = 4
    pairs = torch.tensor(list(itertools.combinations(range(n), 2))).T  # [2, 6]
    atom_type = torch.tensor([ATOM_INDEX[s] for s in ("C", "N", "O", "H")])[torch.randperm(n, generator=g)]
    charge = torch.zeros(n, dtype=torch.long)
    # Sharp, over-bonding predictions (high single/double mass), as a noisy denoiser gives.
    logits = 3.0 * torch.randn(pairs.shape[1], 4, generator=g, dtype=torch.float64)
    logits[:, 0] -= 2.0
    probs = torch.softmax(logits, -1)
    limits = _limits(atom_type, charge)
    bonds = assign_bonds(probs, pairs, atom_type, charge, prune=0.0)
    assert bool((bond_order_sums(bonds, pairs, n) <= limits).all())
    got = float(torch.log(probs[torch.arange(len(bonds)), bonds]).sum())
    assert got == pytest.approx(_brute_force(probs, pairs, limits), abs=1e-9)


def test_assignment_keeps_the_most_probable_bonds_when_they_are_allowed():
    # Ethane's C-C and six C-H bonds predicted with p = 0.9; every other pair "no bond" with 0.99.
    mol = Chem.AddHs(Chem.MolFromSmiles("CC"))
    n = mol.GetNumAtoms()
    atom_type = torch.tensor([ATOM_INDEX[a.GetSymbol()] for a in mol.GetAtoms()])
    pairs = torch.tensor(list(itertools.combinations(range(n), 2))).T
    bonded = {tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds()}
    probs = torch.full((pairs.shape[1], 5), 0.0025, dtype=torch.float64)
    for e, (a, b) in enumerate(pairs.T.tolist()):
        k = 1 if (a, b) in bonded else 0
        probs[e, k] = 0.99 if k == 0 else 0.9
        probs[e, 1 - k if k == 1 else 1] = 1 - probs[e, k] - 3 * 0.0025
    bonds = assign_bonds(probs, pairs, atom_type, torch.zeros(n, dtype=torch.long))
    assert torch.equal(bonds, probs.argmax(-1))
    # Pentavalent carbon proposed (an extra C-H with p = 0.6 on carbon 0): the weakest bond goes.
    probs2 = probs.clone()
    extra = next(e for e, (a, b) in enumerate(pairs.T.tolist()) if a == 0 and (a, b) not in bonded and b >= 2)
    probs2[extra] = torch.tensor([0.39, 0.6, 0.005, 0.005, 0.0], dtype=torch.float64)
    fixed = assign_bonds(probs2, pairs, atom_type, torch.zeros(n, dtype=torch.long))
    assert bool((bond_order_sums(fixed, pairs, n) <= _limits(atom_type, [0] * n)).all())
    assert int((fixed > 0).sum()) == 7  # one bond of carbon 0 removed, the rest kept


def test_sampler_option_keeps_the_trajectory_and_the_raw_bonds():
    from test_eqgat_diff import PRIORS, SMALL

    from geo3d.diffusion.eqgat_diff import EQGATDiffusion

    model = EQGATDiffusion({"denoiser": SMALL, "priors": PRIORS, "timesteps": 50})
    raw = model.sample(4, steps=6, sampler="fast", generator=torch.Generator().manual_seed(3))
    aware = model.sample(
        4, steps=6, sampler="fast", generator=torch.Generator().manual_seed(3), valence_aware=True
    )
    changed = 0
    for r, a in zip(raw, aware, strict=True):
        assert torch.equal(r["bonds"], a["bonds_raw"]) and torch.equal(r["pos"], a["pos"])
        assert torch.equal(a["bonds"], a["bonds"].T) and not bool(a["bonds"].diagonal().any())
        n = a["atom_type"].shape[0]
        pairs = torch.triu_indices(n, n, 1)
        sums = bond_order_sums(a["bonds"][pairs[0], pairs[1]], pairs, n)
        assert bool((sums <= _limits(a["atom_type"], a["charge"])).all())
        changed += int(not torch.equal(a["bonds"], a["bonds_raw"]))
        build_mol(a["atom_type"], a["charge"], a["bonds"], a["pos"])  # a molecule RDKit can hold
    assert changed >= 1  # an untrained denoiser over-bonds: the option must have done something


def test_bond_orders_follow_the_bond_classes():
    assert BOND_ORDER.tolist() == [0.0, 1.0, 2.0, 3.0, 1.5]
