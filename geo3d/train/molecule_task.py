"""The molecule-generation task (EQGAT-diff) for the shared trainer."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from geo3d.data.molecules import build_mol
from geo3d.train.config import ExperimentConfig


class MoleculeGenerationTask:
    """Train EQGAT-diff on QM9 or an SDF set; validate by sampling and scoring molecules."""

    arch = "eqgat_diff"
    name = "molecule-generation"
    headline = "mol_stability"

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self._train_set: Dataset | None = None
        self._train_smiles = None  # canonical training SMILES for novelty, computed once

    def datasets(self) -> tuple[Dataset, Dataset]:
        d = self.cfg.data
        if d.dataset == "qm9":
            from geo3d.data.qm9 import QM9

            train = QM9("train", root=d.path, cache_dir=d.cache_dir, limit=d.limit_train)
            val = QM9("val", root=d.path, cache_dir=d.cache_dir, limit=d.limit_val)
        else:
            from geo3d.data.sdf import read_sdf

            if d.path is None:
                raise ValueError("data.path: an SDF file or folder is required for dataset 'sdf'")
            mols = read_sdf(d.path)
            n_val = max(1, len(mols) // 10)
            gen = torch.Generator().manual_seed(self.cfg.train.seed)
            order = torch.randperm(len(mols), generator=gen).tolist()
            val = [mols[k] for k in order[:n_val]]
            train = [mols[k] for k in order[n_val:]]
            if d.limit_train:
                train = train[: d.limit_train]
            if d.limit_val:
                val = val[: d.limit_val]
        self._train_set = train
        return train, val

    def model_config(self, train_set: Dataset) -> dict[str, Any]:
        from geo3d.data.marginals import molecule_marginals

        stats = molecule_marginals(train_set)
        config = copy.deepcopy(self.cfg.model)
        config["priors"] = {
            "atoms": stats.atom_type_count.tolist(),
            "charges": stats.charge_count.tolist(),
            "bonds": stats.bond_type_count.tolist(),
            "num_atoms": stats.num_atoms_count.tolist(),
        }
        return config

    def build_model(self, model_config: dict[str, Any]) -> nn.Module:
        from geo3d.diffusion.eqgat_diff import EQGATDiffusion

        return EQGATDiffusion(model_config)

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        return model(batch, generator)

    def evaluate(self, model: nn.Module, val_set: Dataset) -> dict[str, float]:
        from geo3d.data.marginals import molecule_marginals
        from geo3d.data.smiles import canonical_smiles_set
        from geo3d.metrics.molecules import evaluate_molecules

        if self._train_smiles is None and self._train_set is not None:
            self._train_smiles = canonical_smiles_set(molecule_marginals(self._train_set).smiles)

        tc = self.cfg.train
        gen = torch.Generator().manual_seed(tc.seed)
        samples = model.sample(tc.eval_samples, steps=tc.eval_steps, sampler="fast", generator=gen)
        mols = [build_mol(m["atom_type"], m["charge"], m["bonds"], m["pos"]) for m in samples]
        metrics = evaluate_molecules(
            mols, train_smiles=self._train_smiles or None, posebusters=False, xtb=False
        )
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
