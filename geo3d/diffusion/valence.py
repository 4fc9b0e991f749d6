"""Valence-aware bond assignment for the last reverse step of EQGAT-diff (an explicit option).

The raw sampler draws every bond of the clean molecule independently from the
denoiser's predicted distribution ``p(bond_ij)``; most of the molecules that
fail RDKit then have one atom whose bond orders add up to more than it may
carry (pentavalent carbons in three-membered rings). :func:`assign_bonds`
instead picks, per molecule, the bond classes that maximise
``sum_ij log p(bond_ij)`` subject to every atom's bond-order sum staying within
its largest valence RDKit accepts (element and formal charge as sampled): a
small 0/1 integer program, solved exactly with HiGHS (``scipy.optimize.milp``).
Pairs whose "no bond" probability is above ``1 - prune`` are fixed to no bond
first, which leaves a few dozen binaries for a QM9-sized molecule.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from rdkit import Chem, rdBase
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array
from torch import Tensor

from geo3d.data.molecules import ATOM_VOCAB, BOND_TYPES

# Bond order of each bond class (BOND_TYPES); aromatic counts 1.5 as in RDKit.
BOND_ORDER = np.array([0.0, 1.0, 2.0, 3.0, 1.5])
assert len(BOND_ORDER) == len(BOND_TYPES)
_MOST = 8  # no element of the vocabulary is asked to carry more than this


@cache
def max_valence(atom_type: int, charge: int) -> int:
    """Largest bond-order sum RDKit sanitises for this element (:data:`ATOM_VOCAB` index) and
    formal charge: found by asking RDKit about ``[X H_k]`` with k explicit hydrogens."""
    best = 0
    with rdBase.BlockLogs():
        for k in range(_MOST + 1):
            mol = Chem.RWMol()
            centre = Chem.Atom(ATOM_VOCAB[atom_type])
            centre.SetFormalCharge(int(charge))
            centre.SetNoImplicit(True)
            mol.AddAtom(centre)
            for _ in range(k):
                h = mol.AddAtom(Chem.Atom(1))
                mol.AddBond(0, h, Chem.BondType.SINGLE)
            try:
                Chem.SanitizeMol(mol)
            except Exception:  # RDKit raises several types; any of them means "not allowed"
                continue
            best = k
    return best


def assign_bonds(
    probs: Tensor,
    pairs: Tensor,
    atom_type: Tensor,
    charge: Tensor,
    prune: float = 1e-3,
    time_limit: float = 5.0,
) -> Tensor:
    """Most probable bond classes of one molecule under the valence limits.

    Args:
        probs: ``[P, K]`` predicted probabilities of each bond class (column 0 = no bond)
            for the atom pairs ``pairs``.
        pairs: ``[2, P]`` atom indices (each unordered pair once).
        atom_type: ``[N]`` :data:`ATOM_VOCAB` indices.
        charge: ``[N]`` formal charges.
        prune: pairs with ``p(no bond) > 1 - prune`` get no bond without entering the program.
        time_limit: seconds HiGHS may spend (a QM9 molecule takes milliseconds).

    Returns:
        ``[P]`` bond classes such that no atom's bond-order sum exceeds :func:`max_valence`.

    Raises:
        RuntimeError: the solver did not prove an optimum within ``time_limit``.
    """
    p = probs.detach().double().cpu().numpy()
    num_pairs = p.shape[0]
    out = np.zeros(num_pairs, dtype=np.int64)
    cand = np.nonzero(p[:, 0] <= 1.0 - prune)[0]
    if cand.size == 0:
        return torch.from_numpy(out)
    limit = np.array(
        [max_valence(int(a), int(q)) for a, q in zip(atom_type.tolist(), charge.tolist(), strict=True)],
        dtype=float,
    )
    # One binary per (candidate pair, class with non-zero probability).
    # "No bond" always stays available, so the program is feasible whatever the limits.
    keep = p[cand] > 1e-12
    keep[:, 0] = True
    e_idx, k_idx = np.nonzero(keep)
    cost = -np.log(np.maximum(p[cand][e_idx, k_idx], 1e-300))
    num_vars = cost.size
    var = np.arange(num_vars)
    one_class = coo_array((np.ones(num_vars), (e_idx, var)), shape=(cand.size, num_vars))
    ends = pairs[:, cand].cpu().numpy()  # [2, C]
    order = BOND_ORDER[k_idx]
    rows = np.concatenate([ends[0, e_idx], ends[1, e_idx]])
    load = coo_array(
        (np.concatenate([order, order]), (rows, np.concatenate([var, var]))),
        shape=(limit.size, num_vars),
    )
    result = milp(
        cost,
        constraints=[
            LinearConstraint(one_class, 1.0, 1.0),
            LinearConstraint(load, -np.inf, limit),
        ],
        integrality=np.ones(num_vars),
        bounds=Bounds(0.0, 1.0),
        options={"time_limit": time_limit},
    )
    if result.status != 0 or result.x is None:
        raise RuntimeError(
            f"valence-aware bond assignment: HiGHS stopped without an optimum ({result.message})"
        )
    chosen = result.x > 0.5
    out[cand[e_idx[chosen]]] = k_idx[chosen]
    return torch.from_numpy(out)


def bond_order_sums(bonds: Tensor, pairs: Tensor, num_atoms: int) -> Tensor:
    """``[N]`` bond-order sum of each atom for ``[P]`` bond classes on ``[2, P]`` pairs."""
    order = torch.as_tensor(BOND_ORDER, dtype=torch.float64)[bonds.cpu()]
    sums = torch.zeros(num_atoms, dtype=torch.float64)
    sums.index_add_(0, pairs[0].cpu(), order)
    sums.index_add_(0, pairs[1].cpu(), order)
    return sums
