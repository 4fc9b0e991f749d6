"""GEOM-Drugs from MiDi's pickles, as EQGAT-diff reads them.

MiDi ships ``{train,val,test}_data.pickle`` (bits.csb.pitt.edu/files/geom_raw/):
a list of ``(smiles, [rdkit.Chem.Mol, ...])``, one entry per molecule, each Mol a
conformer with explicit hydrogens. Like MiDi / EQGAT-diff, at most 5 conformers
per molecule are kept, aromatic bonds stay class 4 (no Kekulé form; ``kekulize=True``
gives one), formal charges are RDKit's, positions are centred on their plain mean,
and ``smiles`` is the pickle's SMILES (the novelty key of that data set).

``pickle.load`` can run arbitrary code: only load pickles from a source you trust.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from rdkit import Chem
from torch_geometric.data import Data

from geo3d.data.molecules import MoleculeError, mol_to_data

GEOM_SPLITS: tuple[str, ...] = ("train", "val", "test")


class GeomFormatError(ValueError):
    """A GEOM pickle that is not MiDi's layout; the message names the file and the entry."""


def geom_pickle_path(path: str | os.PathLike, split: str | None = None) -> Path:
    """``path`` itself if it is a file, else ``path / f"{split}_data.pickle"``."""
    p = Path(path)
    if p.is_dir():
        if split not in GEOM_SPLITS:
            raise ValueError(f"{p} is a folder: pass split= one of {GEOM_SPLITS}, got {split!r}")
        p = p / f"{split}_data.pickle"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such GEOM pickle (MiDi's {{train,val,test}}_data.pickle)")
    return p


def iter_geom_drugs(
    path: str | os.PathLike,
    split: str | None = None,
    max_conformers: int | None = 5,
    kekulize: bool = False,
    errors: str = "raise",
    limit: int | None = None,
) -> Iterator[Data]:
    """Yield one ``Data`` per kept conformer (see :func:`load_geom_drugs`)."""
    if errors not in ("raise", "warn"):
        raise ValueError(f"errors must be 'raise' or 'warn', got {errors!r}")
    file = geom_pickle_path(path, split)
    with open(file, "rb") as fh:
        entries = pickle.load(fh)
    if not isinstance(entries, (list, tuple)):
        raise GeomFormatError(
            f"{file}: expected a list of (smiles, [Mol, ...]), got {type(entries).__name__}"
        )
    for i, entry in enumerate(entries[:limit] if limit is not None else entries):
        if (
            not isinstance(entry, (list, tuple))
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or not isinstance(entry[1], (list, tuple))
        ):
            raise GeomFormatError(
                f"{file}, entry {i}: expected (smiles, [Mol, ...]), got {type(entry).__name__}"
            )
        smiles, conformers = entry
        for j, mol in enumerate(conformers[:max_conformers] if max_conformers is not None else conformers):
            where = f"{file}, entry {i} ({smiles}), conformer {j}"
            if not isinstance(mol, Chem.Mol):
                raise GeomFormatError(f"{where}: expected an RDKit Mol, got {type(mol).__name__}")
            try:
                data = mol_to_data(mol, source=where, kekulize=kekulize)
            except MoleculeError as exc:
                if errors == "raise":
                    raise
                warnings.warn(f"skipped: {exc}", stacklevel=2)
                continue
            data.pos = data.pos - data.pos.mean(dim=0, keepdim=True)
            data.smiles = smiles
            data.idx = torch.tensor([i])
            data.conformer = torch.tensor([j])
            yield data


def load_geom_drugs(
    path: str | os.PathLike,
    split: str | None = None,
    max_conformers: int | None = 5,
    kekulize: bool = False,
    errors: str = "raise",
    limit: int | None = None,
) -> list[Data]:
    """GEOM-Drugs conformers from a MiDi pickle as a list of ``Data``.

    Each item: ``pos [N, 3]`` (Å, mean-centred), ``atom_type [N]``, ``charge [N]``,
    ``edge_index [2, 2B]``, ``bond_type [2B]`` (1..3, and 4 = aromatic unless
    ``kekulize``), ``smiles`` (the pickle's), ``idx [1]`` (entry in the pickle) and
    ``conformer [1]`` (its rank, ``< max_conformers``).

    Args:
        path: a pickle file, or the folder holding ``{split}_data.pickle``.
        max_conformers: first conformers kept per molecule (MiDi: 5); ``None`` keeps all.
        errors: ``"raise"`` (default) or ``"warn"`` (skip a conformer geo3d cannot
            represent, e.g. an element outside the vocabulary, with a warning).
        limit: read only the first ``limit`` molecules of the pickle.

    Raises:
        FileNotFoundError: no such pickle.
        GeomFormatError: not MiDi's layout (file and entry in the message).
        MoleculeError: a conformer geo3d cannot represent (file, entry, conformer).
    """
    return list(iter_geom_drugs(path, split, max_conformers, kekulize, errors, limit))
