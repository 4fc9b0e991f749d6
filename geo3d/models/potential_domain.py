"""What a potential saw in training, and how far outside it a configuration is.

A potential fitted to one kind of structure answers confidently, and often badly,
on another (cu-emt: 0.3 meV/atom on a vacancy, 800 meV/atom on a Cu2 dimer). The
training domain, fitted on the training set after training and stored in the
checkpoint's model config (``config["domain"]``, plain lists: weights-only safe),
holds three things per element (pair):

- **features**: the last interaction block's invariant features of the training
  atoms, standardised per element, summarised by up to ``REPRESENTATIVES`` (256)
  of them chosen by farthest-point sampling, and the covering radius (the
  largest distance of any training atom to its nearest representative). An
  atom's feature ratio is its distance to the nearest representative over that
  radius: the latent-space distance of Janet et al. (Chem. Sci. 2019), which
  needs no second model. The readout is linear in these features, so an atom
  far from all training atoms has an energy the fit never constrained. A single
  Gaussian per element (Mahalanobis distance) was measured first and ranks worse:
  the training set is several clusters (crystal, liquid, strained cells, slab), so
  the Cu38 cluster (57 meV/atom off) sat inside its tail.
- **distances**: per element pair, the shortest distance seen within ``r_max``.
- **coordination**: per element, the range of neighbour counts within ``r_max``.

Each gives a per-atom ratio that is <= 1 inside what training saw and grows
outside it: feature distance / largest training distance; shortest seen pair
distance / this atom's shortest distance of that pair (a pair never seen within
``r_max`` counts as seen at ``r_max``); coordination below the range as
``min / count``, above it as ``count / max``. An atom's **extrapolation** is the
largest of the three; a structure's is its atoms' largest. ``THRESHOLD`` (2.0)
is where the calculator warns: measured on cu-emt, all in-domain test sets stay
below it and the cluster, dimer and strained cases lie far above
(``benchmarks/potential_extrapolation.py``, numbers in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

DOMAIN_VERSION = 1
THRESHOLD = 2.0
REPRESENTATIVES = 256  # per element, at most a quarter of its training atoms
COMPONENTS = ("features", "distance", "coordination")


class ExtrapolationError(ValueError):
    """A configuration outside the potential's training domain (raised by ``strict=True``)."""


def _fold_pairs(species: Tensor, edge_index: Tensor, num_elements: int) -> Tensor:
    """Flat index ``a * num_elements + b`` of each edge's (receiver, sender) element pair."""
    return species[edge_index[1]] * num_elements + species[edge_index[0]]


def fit_domain(
    samples: Iterable[tuple[Tensor, Tensor, Tensor, Tensor]], num_elements: int, r_max: float
) -> dict[str, Any]:
    """Fit the training domain from ``(species [N], features [N, F], edge_index [2, E],
    lengths [E])`` per training structure (edges beyond ``r_max`` are ignored).

    Returns the plain dict stored as the model config's ``domain``.
    """
    feats, specs, coords = [], [], []
    pair_min = torch.full((num_elements * num_elements,), float("inf"), dtype=torch.float64)
    for species, features, edge_index, lengths in samples:
        inside = lengths < r_max
        ei, d = edge_index[:, inside], lengths[inside].double()
        pair = _fold_pairs(species, ei, num_elements)
        pair_min = pair_min.scatter_reduce(0, pair, d, "amin", include_self=True)
        coords.append(torch.bincount(ei[1], minlength=species.shape[0]))
        feats.append(features.detach().double())
        specs.append(species)
    f, s, c = torch.cat(feats), torch.cat(specs), torch.cat(coords)
    mean, std, reps, radius, coord_range = [], [], [], [], []
    for e in range(num_elements):
        fe, ce = f[s == e], c[s == e]
        if fe.shape[0] < 2:
            raise ValueError(
                f"training domain: element index {e} has {fe.shape[0]} training atoms (need >= 2)"
            )
        mu, sd = fe.mean(0), fe.std(0)
        sd = sd.clamp_min(1e-6 * float(sd.max().clamp_min(1e-12)))  # dead channels: no division by 0
        x = (fe - mu) / sd
        idx, rad = farthest_points(x, max(1, min(REPRESENTATIVES, fe.shape[0] // 4)))
        mean.append(mu.tolist())
        std.append(sd.tolist())
        reps.append(x[idx].tolist())
        radius.append(max(rad, 1e-12))
        coord_range.append([int(ce.min()), int(ce.max())])
    pair_min = torch.where(torch.isinf(pair_min), torch.full_like(pair_min, r_max), pair_min)
    return {
        "version": DOMAIN_VERSION,
        "r_max": float(r_max),
        "feature_mean": mean,
        "feature_std": std,
        "feature_representatives": reps,
        "feature_radius": radius,
        "pair_min_distance": pair_min.reshape(num_elements, num_elements).tolist(),
        "coordination_range": coord_range,
        "num_atoms": int(s.shape[0]),
    }


@torch.no_grad()
def fit_model_domain(model: torch.nn.Module, frames, batch_size: int = 8) -> dict[str, Any]:
    """The training domain of ``model`` (an ``InteratomicPotential``) over ``frames`` (``Data``
    with ``z``, ``pos``, ``cell`` and a radius graph of at least ``model.r_max``)."""
    from torch_geometric.data import Batch

    def samples():
        for start in range(0, len(frames), batch_size):
            batch = Batch.from_data_list(list(frames[start : start + batch_size]))
            out = model(batch, compute_forces=False)
            yield model.species(batch.z), out["features"], batch.edge_index, out["lengths"]

    return fit_domain(samples(), len(model.elements), model.r_max)


def farthest_points(x: Tensor, k: int) -> tuple[Tensor, float]:
    """Indices ``[k]`` of ``k`` rows of ``x [N, F]`` chosen by farthest-point sampling (from
    row 0) and the covering radius: the largest distance of any row to its nearest chosen one."""
    idx = [0]
    dmin = (x - x[0]).norm(dim=1)
    for _ in range(k - 1):
        j = int(dmin.argmax())
        idx.append(j)
        dmin = torch.minimum(dmin, (x - x[j]).norm(dim=1))
    return torch.tensor(idx), float(dmin.max())


class TrainingDomain:
    """The fitted domain of one potential, as tensors; see the module docstring."""

    def __init__(self, domain: dict[str, Any]) -> None:
        if domain.get("version") != DOMAIN_VERSION:
            raise ValueError(
                f"training domain version {domain.get('version')!r}; this geo3d reads {DOMAIN_VERSION}"
            )
        self.r_max = float(domain["r_max"])
        self.mean = torch.tensor(domain["feature_mean"], dtype=torch.float64)  # [S, F]
        self.std = torch.tensor(domain["feature_std"], dtype=torch.float64)  # [S, F]
        self.reps = [
            torch.tensor(r, dtype=torch.float64) for r in domain["feature_representatives"]
        ]  # S x [K, F]
        self.radius = torch.tensor(domain["feature_radius"], dtype=torch.float64)  # [S]
        self.pair_min = torch.tensor(domain["pair_min_distance"], dtype=torch.float64).reshape(-1)  # [S * S]
        self.coord = torch.tensor(domain["coordination_range"], dtype=torch.float64)  # [S, 2]
        self.num_elements = self.mean.shape[0]

    def components(
        self, species: Tensor, features: Tensor, edge_index: Tensor, lengths: Tensor
    ) -> dict[str, Tensor]:
        """Per-atom ratios ``[N]`` (float64, CPU) of each component; <= 1 inside the domain.

        Args:
            species ``[N]`` element indices; features ``[N, F]`` last-block invariant features;
            edge_index ``[2, E]`` (sender, receiver); lengths ``[E]`` in Å (edges beyond r_max ignored).
        """
        species, features = species.cpu(), features.detach().cpu().double()
        edge_index, lengths = edge_index.cpu(), lengths.detach().cpu().double()
        n = species.shape[0]
        feat = torch.zeros(n, dtype=torch.float64)
        for e in torch.unique(species).tolist():
            mask = species == e
            x = (features[mask] - self.mean[e]) / self.std[e]
            feat[mask] = torch.cdist(x, self.reps[e]).amin(1) / self.radius[e]

        inside = lengths < self.r_max
        ei, d = edge_index[:, inside], lengths[inside]
        seen = self.pair_min[_fold_pairs(species, ei, self.num_elements)]
        ratio = seen / d.clamp_min(1e-12)
        dist = torch.zeros(n, dtype=torch.float64).scatter_reduce(0, ei[1], ratio, "amax", include_self=True)

        count = torch.bincount(ei[1], minlength=n).double()
        lo, hi = self.coord[species, 0], self.coord[species, 1]
        coord = torch.maximum(lo / count.clamp_min(0.5), count / hi.clamp_min(1.0))
        return {"features": feat, "distance": dist, "coordination": coord}

    def extrapolation(self, species: Tensor, features: Tensor, edge_index: Tensor, lengths: Tensor) -> Tensor:
        """Per-atom extrapolation ``[N]``: the largest component ratio."""
        parts = self.components(species, features, edge_index, lengths)
        return torch.stack([parts[k] for k in COMPONENTS]).amax(0)


def describe_atom(parts: dict[str, Tensor], atom: int, symbol: str) -> str:
    """One line naming an atom's extrapolation and the ratio of each component."""
    detail = ", ".join(f"{k} {float(parts[k][atom]):.2f}" for k in COMPONENTS)
    worst = max(float(parts[k][atom]) for k in COMPONENTS)
    return f"atom {atom} ({symbol}): extrapolation {worst:.2f} ({detail})"
