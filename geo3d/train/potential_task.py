"""The interatomic-potential task (energies, forces, stress) for the shared trainer."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from torch_geometric.data import Batch

from geo3d.graph.neighbors import with_radius_graph
from geo3d.train.config import ExperimentConfig

DEFAULT_R_MAX = 4.5


class PotentialTask:
    """Fit ``geo3d.models.potential`` to extxyz / rMD17 labels; validate with MAE/RMSE metrics."""

    arch = "potential"
    name = "interatomic-potential"
    headline = "forces_mae_meV_A"
    lower_is_better = True

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self._train_set: list | None = None
        self._domain: dict[str, Any] | None = None

    def _read(self, path: str) -> list:
        d = self.cfg.data
        if d.dataset == "rmd17":
            from geo3d.data.atomistic import read_rmd17

            frames = read_rmd17(path)
        else:
            from geo3d.data.atomistic import read_labelled_structures

            frames = read_labelled_structures(path, d.energy_key, d.forces_key, d.stress_key)
        r_max = float(self.cfg.model.get("r_max", DEFAULT_R_MAX))
        return [with_radius_graph(f, r_max) for f in frames]

    def datasets(self) -> tuple[Dataset, Dataset]:
        d = self.cfg.data
        if d.path is None:  # the data set itself (extxyz or rmd17) is checked by ExperimentConfig
            raise ValueError("data: the potential task needs dataset 'extxyz' or 'rmd17' and data.path")
        train = self._read(d.path)
        if d.val_path is not None:
            val = self._read(d.val_path)
        else:
            gen = torch.Generator().manual_seed(self.cfg.train.seed)
            order = torch.randperm(len(train), generator=gen).tolist()
            n_val = max(1, len(train) // 10)
            val, train = [train[k] for k in order[:n_val]], [train[k] for k in order[n_val:]]
        if d.limit_train:
            train = train[: d.limit_train]
        if d.limit_val:
            val = val[: d.limit_val]
        self._train_set = train
        return train, val

    def model_config(self, train_set: Dataset) -> dict[str, Any]:
        """The config plus what is fitted on the training set: E0s, mean neighbours, force scale."""
        config = copy.deepcopy(self.cfg.model)
        elements = sorted({int(z) for data in train_set for z in data.z.tolist()})
        config.setdefault("elements", elements)
        elements = config["elements"]
        counts = torch.zeros(len(train_set), len(elements), dtype=torch.float64)
        energies = torch.tensor([float(data.energy) for data in train_set], dtype=torch.float64)
        for k, data in enumerate(train_set):
            for col, z in enumerate(elements):
                counts[k, col] = float((data.z == z).sum())
        # Least-squares reference energies; lstsq gives the minimum-norm answer when the
        # composition does not vary (a single element): then E0 is the mean energy per atom.
        e0 = torch.linalg.lstsq(counts, energies.unsqueeze(1)).solution.squeeze(1)
        config["e0"] = e0.tolist()
        config["avg_num_neighbors"] = float(
            sum(d.edge_index.shape[1] for d in train_set) / sum(d.num_nodes for d in train_set)
        )
        forces = torch.cat([d.forces for d in train_set])
        config["scale"] = float(forces.square().mean().sqrt())
        config["shift"] = 0.0
        return config

    def build_model(self, model_config: dict[str, Any]) -> nn.Module:
        from geo3d.models.potential import InteratomicPotential

        return InteratomicPotential(model_config).double()

    def _predict(self, model: nn.Module, batch: Batch, training: bool) -> dict[str, torch.Tensor]:
        has_stress = getattr(batch, "stress", None) is not None and self.cfg.loss.stress > 0
        return model(batch, compute_forces=True, compute_stress=has_stress, training=training)

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        pred = self._predict(model, batch, training=True)
        w = self.cfg.loss
        natoms = torch.bincount(batch.batch, minlength=batch.num_graphs).to(pred["energy"].dtype)
        parts = {
            "energy": ((pred["energy"] - batch.energy) / natoms).square().mean(),
            "forces": (pred["forces"] - batch.forces).square().mean(),
        }
        total = w.energy * parts["energy"] + w.forces * parts["forces"]
        if "stress" in pred:
            parts["stress"] = (pred["stress"] - batch.stress).square().mean()
            total = total + w.stress * parts["stress"]
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def evaluate(self, model: nn.Module, val_set: Dataset) -> dict[str, float]:
        """Errors on ``val_set`` and its extrapolation against the training domain, refitted
        here on the training set with the weights being validated (the EMA ones)."""
        from geo3d.models.potential_domain import TrainingDomain, fit_model_domain

        if self._train_set is not None:
            self._domain = fit_model_domain(model, self._train_set)
            model.domain = TrainingDomain(self._domain)
        return evaluate_potential(model, val_set)

    def fitted_config(self) -> dict[str, Any]:
        """Model-config entries fitted at validation that the checkpoint keeps: the training domain."""
        return {} if self._domain is None else {"domain": self._domain}


def evaluate_potential(model: nn.Module, frames, batch_size: int = 8) -> dict[str, float]:
    """Energy per atom (meV/atom), force (meV/Å) and stress (meV/Å^3) MAE and RMSE over ``frames``;
    with a training domain also the structures' extrapolation (median, max, and the share above
    the calculator's warning threshold)."""
    from geo3d.models.potential_domain import THRESHOLD

    de, df, ds, ext = [], [], [], []
    with torch.enable_grad():  # forces are gradients, even under the trainer's no_grad
        for start in range(0, len(frames), batch_size):
            batch = Batch.from_data_list(list(frames[start : start + batch_size]))
            has_stress = getattr(batch, "stress", None) is not None
            pred = model(batch, compute_forces=True, compute_stress=has_stress)
            natoms = torch.bincount(batch.batch, minlength=batch.num_graphs)
            de.append(((pred["energy"] - batch.energy) / natoms).detach())
            df.append((pred["forces"] - batch.forces).detach().reshape(-1))
            if has_stress:
                ds.append((pred["stress"] - batch.stress).detach().reshape(-1))
            if "extrapolation" in pred:
                per_graph = torch.zeros(batch.num_graphs, dtype=torch.float64)
                ext.append(per_graph.scatter_reduce(0, batch.batch.cpu(), pred["extrapolation"], "amax"))
    metrics = {}
    for name, errs, unit in (("energy", de, "meV_atom"), ("forces", df, "meV_A"), ("stress", ds, "meV_A3")):
        if errs:
            e = torch.cat(errs) * 1000
            metrics[f"{name}_mae_{unit}"] = float(e.abs().mean())
            metrics[f"{name}_rmse_{unit}"] = float(e.square().mean().sqrt())
    if ext:
        x = torch.cat(ext)
        metrics["extrapolation_median"] = float(x.median())
        metrics["extrapolation_max"] = float(x.max())
        metrics["extrapolated_fraction"] = float((x > THRESHOLD).double().mean())
    return metrics
