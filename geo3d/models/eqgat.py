"""EQGAT-diff denoiser: predicts clean coordinates, atom types, charges and bonds (x0-parameterised).

Architecture of Le et al. (ICLR 2024), discrete-diffusion variant: fully connected
graph per molecule, EQGAT layers (:mod:`geo3d.nn.eqgat`) and the published heads.
Choices where the paper and code leave room (listed here, kept in the config):

- sizes: ``num_layers``, ``s_dim``, ``v_dim``, ``e_dim`` (code default 7/256/64/32;
  re-implementations use 12/256/256/128; the shipped CPU-trained model is smaller);
- normalisation divides by the standard deviation (see :mod:`geo3d.nn.eqgat`);
- the last layer drops the vector output projection instead of using a
  separate single-linear gate (the vectors after it only feed the coordinate head).

The vector messages run through the fused tensor-product conv of geo3d.ops
(:class:`geo3d.nn.eqgat.VectorMessages`), measured faster than plain torch in
``benchmarks/eqgat_vector_messages.py``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from geo3d.models.config import ModelConfig, PositiveInt
from geo3d.nn.eqgat import EQGATLayer
from geo3d.ops import scatter


class EQGATDenoiserConfig(ModelConfig):
    """The denoiser's sizes; defaults are the paper's (7 layers, 256 / 64 / 32)."""

    arch: ClassVar[str] = "EQGATDenoiser"

    num_atom_types: PositiveInt = 16
    num_charges: PositiveInt = 6
    num_bond_types: PositiveInt = 5
    num_layers: PositiveInt = 7
    s_dim: PositiveInt = 256  # invariant (scalar) features per atom
    v_dim: PositiveInt = 64  # vector features per atom
    e_dim: PositiveInt = 32  # edge (bond) features


class EQGATDenoiser(nn.Module):
    """x0-predicting network of EQGAT-diff.

    Shapes (N atoms, E fully connected directed edges, B molecules):
        inputs: ``atoms [N, A]``, ``charges [N, C]`` (noisy one-hots or
        probabilities), ``pos [N, 3]`` (noisy, zero centre of mass),
        ``bonds [E, K]``, ``t [B]`` in [0, 1], ``edge_index [2, E]``,
        ``reverse [E]`` (index of the opposite edge), ``batch [N]``.
        outputs: dict with ``pos [N, 3]``, ``atom_logits [N, A]``,
        ``charge_logits [N, C]``, ``bond_logits [E, K]`` (symmetric in i, j).

    With ``self_condition`` the forward takes ``cond``, an earlier prediction
    of the clean molecule (the same dict of outputs, or None for "none yet"):
    its atom, charge and bond probabilities and the distances between its
    predicted positions (invariants, so equivariance holds) enter the atom and
    bond embeddings through linear maps that start at zero, so a model warm
    started from one without them computes what that model did.
    """

    def __init__(self, config: dict[str, Any], self_condition: bool = False) -> None:
        super().__init__()
        cfg = EQGATDenoiserConfig.resolve(config)
        self.config = cfg
        a, c, k = cfg["num_atom_types"], cfg["num_charges"], cfg["num_bond_types"]
        s, v, e, n_layers = cfg["s_dim"], cfg["v_dim"], cfg["e_dim"], cfg["num_layers"]
        self.atom_in = nn.Linear(a + c, s)
        self.atom_time = nn.Linear(1, s)
        self.atom_mix = nn.Linear(s, s)
        self.bond_in = nn.Linear(k, e)
        self.bond_time = nn.Linear(1, e)
        self.bond_mix = nn.Linear(e, e)
        self.self_condition = self_condition
        if self_condition:
            self.cond_atom = nn.Linear(a + c, s)
            self.cond_bond = nn.Linear(k + 1, e)
            for lin in (self.cond_atom, self.cond_bond):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        self.layers = nn.ModuleList(
            EQGATLayer(s, v, e, first=(ell == 0), last=(ell == n_layers - 1)) for ell in range(n_layers)
        )
        self.head_s = nn.Linear(s, s)
        self.head_coord = nn.Linear(v, 1, bias=False)
        self.head_atoms = nn.Linear(s, a + c)
        self.head_bond_edge = nn.Linear(e, s)
        self.head_bond = nn.Sequential(nn.Linear(s + 1, s), nn.SiLU(), nn.Linear(s, k))
        self.num_atom_types, self.num_charges = a, c

    def forward(
        self,
        atoms: Tensor,
        charges: Tensor,
        pos: Tensor,
        bonds: Tensor,
        t: Tensor,
        edge_index: Tensor,
        reverse: Tensor,
        batch: Tensor,
        num_graphs: int,
        cond: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        t_node = t.index_select(0, batch).unsqueeze(-1)
        t_edge = t_node.index_select(0, edge_index[1])
        s = self.atom_in(torch.cat([atoms, charges], -1)) + self.atom_time(t_node)
        e = self.bond_in(bonds) + self.bond_time(t_edge)
        if self.self_condition:
            cs, ce = self._cond_features(cond, atoms, bonds, edge_index)
            s, e = s + self.cond_atom(cs), e + self.cond_bond(ce)
        elif cond is not None:
            raise ValueError("cond given to a denoiser built without self_condition")
        s, e = self.atom_mix(s), self.bond_mix(e)
        v = s.new_zeros(s.shape[0], 3, 1)  # replaced by the first layer
        p = pos
        for layer in self.layers:
            s, v, p, e = layer(s, v, p, e, edge_index, batch, num_graphs)
        s = torch.nn.functional.silu(self.head_s(s))
        x0 = p + self.head_coord(v).squeeze(-1)
        x0 = x0 - scatter(x0, batch, 0, num_graphs, "mean").index_select(0, batch)
        logits = self.head_atoms(s)
        j, i = edge_index[0], edge_index[1]
        e_sym = 0.5 * (e + e.index_select(0, reverse))
        d2 = ((x0.index_select(0, i) - x0.index_select(0, j)) ** 2).sum(-1, keepdim=True)
        bond_logits = self.head_bond(
            torch.cat([s.index_select(0, i) + s.index_select(0, j) + self.head_bond_edge(e_sym), d2], -1)
        )
        return {
            "pos": x0,
            "atom_logits": logits[:, : self.num_atom_types],
            "charge_logits": logits[:, self.num_atom_types :],
            "bond_logits": bond_logits,
        }

    def _cond_features(
        self, cond: dict[str, Tensor] | None, atoms: Tensor, bonds: Tensor, edge_index: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Self-conditioning inputs ``[N, A + C]`` and ``[E, K + 1]``; zeros without a prediction."""
        if cond is None:
            return (
                atoms.new_zeros(atoms.shape[0], self.num_atom_types + self.num_charges),
                bonds.new_zeros(bonds.shape[0], bonds.shape[1] + 1),
            )
        x0 = cond["pos"]
        dist = (x0.index_select(0, edge_index[1]) - x0.index_select(0, edge_index[0])).norm(
            dim=-1, keepdim=True
        )
        node = torch.cat([cond["atom_logits"].softmax(-1), cond["charge_logits"].softmax(-1)], -1)
        return node, torch.cat([cond["bond_logits"].softmax(-1), dist], -1)
