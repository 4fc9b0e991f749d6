"""An equivariant interatomic potential (NequIP-style) on geo3d's fused tensor-product convolution.

Energy ``E = sum_i (scale * e_i + shift + E0[z_i])`` with per-atom ``e_i`` from
``num_layers`` interaction blocks; forces ``-dE/dpos`` and stress ``(1/V) dE/d eps``
(a symmetric strain ``eps`` applied to positions and cell) come from one backward
pass. Interaction block (NequIP, Batzner et al. 2022, with MACE's channel-wise
conv): linear mixing -> ``ChannelWiseTensorProductConv(x, Y(r_ij), R(|r_ij|))``
divided by the mean neighbour count -> linear -> gate non-linearity, plus a
species-independent linear self-connection (residual). ``R`` is an MLP of a
Bessel basis times the polynomial cutoff, so energies are smooth at ``r_max``.

Config keys (``configs/potential_*.yaml``, ``model:``): ``elements`` (atomic
numbers), ``r_max``, ``num_basis``, ``lmax`` (spherical harmonics), ``channels``,
``hidden_lmax``, ``num_layers``, ``radial_hidden``; fitted from the training set
by the task: ``e0`` (per-element reference energies, least squares),
``avg_num_neighbors``, ``scale`` (RMS force), ``shift``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from e3nn import o3
from e3nn.nn import Gate
from pydantic import Field, StrictInt, model_validator
from torch import Tensor, nn
from typing_extensions import Self

from geo3d.graph.edges import edge_vectors
from geo3d.graph.neighbor_list import check_graph_cutoff
from geo3d.graph.radial import RadialEmbedding
from geo3d.models.config import ModelConfig, NonNegativeInt, PositiveInt
from geo3d.models.potential_domain import TrainingDomain
from geo3d.nn import ChannelWiseTensorProductConv
from geo3d.ops.scatter import scatter


class PotentialConfig(ModelConfig):
    """The NequIP-style potential's sizes, the cutoff, and what training fits (elements, e0, scale,
    shift, the training domain)."""

    arch: ClassVar[str] = "potential"

    r_max: float = Field(4.5, gt=0)  # cutoff (Angstrom); the graph must be built at it
    num_basis: PositiveInt = 8
    lmax: NonNegativeInt = 2  # spherical harmonics of the edges
    channels: PositiveInt = 32
    hidden_lmax: NonNegativeInt = 1  # highest l of the node features
    num_layers: PositiveInt = 3
    radial_hidden: PositiveInt = 64
    avg_num_neighbors: float = Field(30.0, gt=0)
    scale: float = 1.0  # energy = scale * readout + shift (per atom) + e0[element]
    shift: float = 0.0
    # required to build the model; the training task fills them in from the training set
    elements: list[Annotated[StrictInt, Field(ge=1, le=118)]] | None = None  # atomic numbers
    e0: list[float] | None = None  # per-element reference energies (eV), one per element
    domain: dict[str, Any] | None = None  # geo3d.models.potential_domain.TrainingDomain's state

    @model_validator(mode="after")
    def _one_e0_per_element(self) -> Self:
        if self.e0 and self.elements and len(self.e0) != len(self.elements):
            raise ValueError(f"'e0' has {len(self.e0)} entries but 'elements' has {len(self.elements)}")
        return self


class UnknownElementError(ValueError):
    """Atoms of an element the potential was not trained on."""


class InteractionBlock(nn.Module):
    """One NequIP-style interaction: mix, convolve with the edges, gate, add the residual."""

    def __init__(
        self, irreps_x: o3.Irreps, irreps_sh: o3.Irreps, channels: int, hidden_lmax: int, cfg
    ) -> None:
        super().__init__()
        target = o3.Irreps([(channels, (l, (-1) ** l)) for l in range(hidden_lmax + 1)])  # noqa: E741
        gated = o3.Irreps([(mul, ir) for mul, ir in target if ir.l > 0])
        self.gate = Gate(
            o3.Irreps(f"{channels}x0e"),
            [nn.functional.silu],
            o3.Irreps(f"{gated.num_irreps}x0e"),
            [torch.sigmoid],
            gated,
        )
        self.mix_in = o3.Linear(irreps_x, irreps_x)
        self.conv = ChannelWiseTensorProductConv(irreps_x, irreps_sh, self.gate.irreps_in)
        # No biases: R(0) = 0, so an edge at or beyond r_max (where the enveloped basis
        # vanishes with its first two derivatives) contributes nothing, smoothly.
        self.radial = nn.Sequential(
            nn.Linear(cfg["num_basis"], cfg["radial_hidden"], bias=False),
            nn.SiLU(),
            nn.Linear(cfg["radial_hidden"], self.conv.weight_numel, bias=False),
        )
        self.mix_out = o3.Linear(self.conv.irreps_out, self.gate.irreps_in)
        self.self_connection = o3.Linear(irreps_x, self.gate.irreps_in)
        self.irreps_out = self.gate.irreps_out
        self.inv_neighbors = 1.0 / float(cfg["avg_num_neighbors"])

    def forward(self, x: Tensor, sh: Tensor, radial: Tensor, edge_index: Tensor) -> Tensor:
        """x ``[N, irreps_x.dim]``, sh ``[E, irreps_sh.dim]``, radial ``[E, num_basis]`` -> ``[N, irreps_out.dim]``."""
        msg = self.conv(self.mix_in(x), sh, self.radial(radial), edge_index) * self.inv_neighbors
        return self.gate(self.mix_out(msg) + self.self_connection(x))


class InteratomicPotential(nn.Module):
    """Energies, forces and stress of atomistic ``Data`` (``pos``, ``z``, ``cell``, ``pbc``, radius graph)."""

    Config: ClassVar[type[ModelConfig]] = PotentialConfig  # its config: keys, types, defaults

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        cfg = PotentialConfig.resolve(config)
        if not cfg.get("elements"):
            raise ValueError("potential config: 'elements' (atomic numbers) is required")
        self.config = cfg
        self.elements = [int(z) for z in cfg["elements"]]
        self.r_max = float(cfg["r_max"])
        index = torch.full((119,), -1, dtype=torch.long)
        index[torch.tensor(self.elements)] = torch.arange(len(self.elements))
        self.register_buffer("z_to_index", index, persistent=False)
        e0 = cfg.get("e0") or [0.0] * len(self.elements)
        self.register_buffer("e0", torch.tensor(e0, dtype=torch.float64))
        self.scale, self.shift = float(cfg["scale"]), float(cfg["shift"])

        channels = int(cfg["channels"])
        self.irreps_sh = o3.Irreps.spherical_harmonics(int(cfg["lmax"]))
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.radial_embedding = RadialEmbedding(self.r_max, int(cfg["num_basis"]))
        self.embed = nn.Linear(len(self.elements), channels, bias=False)
        irreps = o3.Irreps(f"{channels}x0e")
        self.blocks = nn.ModuleList()
        for _ in range(int(cfg["num_layers"])):
            block = InteractionBlock(irreps, self.irreps_sh, channels, int(cfg["hidden_lmax"]), cfg)
            self.blocks.append(block)
            irreps = block.irreps_out
        self.readout = o3.Linear(irreps, o3.Irreps("1x0e"))
        # The invariant (0e) channels of the last block: the features the readout sees and
        # the training domain measures distances in (geo3d.models.potential_domain).
        self.register_buffer(
            "feature_channels", torch.tensor([k for k, ir in _scalar_channels(irreps)]), persistent=False
        )
        self._inference_energies = self.energies_and_features  # compile_energy() swaps in a compiled one
        self.domain = TrainingDomain(cfg["domain"]) if cfg.get("domain") else None

    def species(self, z: Tensor) -> Tensor:
        """Index of each atom's element in ``elements``; raises for an element the model does not know."""
        if z.numel() and (z.min() < 0 or z.max() > 118):
            raise UnknownElementError(
                f"atomic numbers must be in 1..118, got {z.min().item()}..{z.max().item()}"
            )
        idx = self.z_to_index[z]
        if (idx < 0).any():
            bad = sorted({int(v) for v in z[idx < 0].tolist()})
            raise UnknownElementError(
                f"atomic number(s) {bad} not among this potential's elements {self.elements}"
            )
        return idx

    def energies_and_features(
        self,
        pos: Tensor,
        cell: Tensor,
        batch: Tensor,
        species: Tensor,
        edge_index: Tensor,
        shifts: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-atom energies ``[N]``, last-block invariant features ``[N, F]`` and edge lengths
        ``[E]`` from positions ``[N, 3]``, cells ``[B, 3, 3]``, graph index ``batch [N]``, element
        indices ``species [N]`` and the radius graph (``edge_index [2, E]``, ``shifts [E, 3]`` or
        None): the part of the model that ``compile_energy`` compiles."""
        vec = edge_vectors(pos, edge_index, shifts, cell, batch)
        sh = self.sh(vec)
        lengths = vec.norm(dim=1)
        radial = self.radial_embedding(lengths)
        x = self.embed(nn.functional.one_hot(species, len(self.elements)).to(pos.dtype))
        for block in self.blocks:
            x = block(x, sh, radial, edge_index)
        energies = self.scale * self.readout(x).squeeze(-1) + self.shift + self.e0.to(pos.dtype)[species]
        return energies, x.index_select(1, self.feature_channels), lengths

    def atom_energies(self, *args: Tensor | None) -> Tensor:
        """Per-atom energies ``[N]`` (the arguments of ``energies_and_features``)."""
        return self.energies_and_features(*args)[0]

    def compile_energy(self, **options: Any) -> InteratomicPotential:
        """Run ``energies_and_features`` through ``torch.compile`` (``dynamic=True``: atom and edge
        counts change between calls) for inference: energies, forces and stress. Training
        (``training=True``, forces differentiated again) stays eager: AOTAutograd has no
        double backward. Returns ``self``.
        """
        self._inference_energies = torch.compile(self.energies_and_features, dynamic=True, **options)
        return self

    def forward(
        self, data, compute_forces: bool = True, compute_stress: bool = False, training: bool = False
    ):
        """Returns a dict: ``energy [B]``, ``energies [N]`` (per atom), ``features [N, F]``
        (last-block invariants, detached), ``lengths [E]`` (edge lengths, detached), and
        ``forces [N, 3]``, ``stress [B, 3, 3]`` (eV/Å^3, ASE's sign) when asked, and
        ``extrapolation [N]`` (float64, CPU) when the model has a training domain.
        ``training=True`` keeps the graph of the forces so that a force loss can be
        differentiated.
        """
        check_graph_cutoff(data, self.r_max, "potential")
        pos, z = data.pos, data.z
        n = pos.shape[0]
        batch = data.batch if getattr(data, "batch", None) is not None else pos.new_zeros(n, dtype=torch.long)
        num_graphs = int(data.num_graphs) if hasattr(data, "num_graphs") else 1
        cell = data.cell.reshape(-1, 3, 3).to(pos.dtype)
        species = self.species(z)
        if (compute_forces or compute_stress) and not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        leaf, strain = pos, None
        if compute_stress:  # E(pos (1 + eps), cell (1 + eps)): dE/d eps at eps = 0 is the virial
            strain = torch.zeros(num_graphs, 3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            pos = pos + torch.einsum("ni,nij->nj", pos, sym[batch])
            cell = cell + torch.bmm(cell, sym)
        energies_fn = self.energies_and_features if training else self._inference_energies
        energies, features, lengths = energies_fn(
            pos, cell, batch, species, data.edge_index, getattr(data, "shifts", None)
        )
        energy = scatter(energies, batch, dim=0, dim_size=num_graphs)
        out = {
            "energy": energy,
            "energies": energies,
            "features": features.detach(),
            "lengths": lengths.detach(),
        }
        if self.domain is not None and not training:
            out["extrapolation"] = self.domain.extrapolation(species, features, data.edge_index, lengths)
        wrt = []
        if compute_forces:
            wrt.append(leaf)
        if compute_stress:
            wrt.append(strain)
        if wrt:
            grads = torch.autograd.grad(energy.sum(), wrt, create_graph=training)
            if compute_forces:
                out["forces"] = -grads[0]
            if compute_stress:
                volume = torch.linalg.det(data.cell.reshape(-1, 3, 3).to(pos.dtype)).abs()
                if (volume == 0).any():
                    raise ValueError("stress needs a cell with non-zero volume")
                out["stress"] = grads[-1] / volume[:, None, None]
        return out


def _scalar_channels(irreps: o3.Irreps) -> list[tuple[int, o3.Irrep]]:
    """(index, irrep) of every 0e component of a feature vector with these irreps."""
    out, offset = [], 0
    for mul, ir in irreps:
        if ir.l == 0 and ir.p == 1:
            out.extend((offset + k, ir) for k in range(mul))
        offset += mul * ir.dim
    return out
