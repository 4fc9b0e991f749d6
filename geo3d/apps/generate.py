"""`geo3d generate`: sampling molecules from a trained EQGAT-diff model, writing them as SDF, scoring them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from rdkit import Chem

from geo3d.data.molecules import build_mol
from geo3d.data.smiles import CanonicalSmiles
from geo3d.files import atomic_write
from geo3d.metrics.molecules import evaluate_molecules
from geo3d.metrics.validity import Metrics


def sample_molecules(
    model: torch.nn.Module,
    n: int,
    batch_size: int = 100,
    steps: int | None = None,
    sampler: str = "ancestral",
    num_atoms: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    valence_aware: bool = False,
    raw_out: list[Chem.Mol] | None = None,
) -> list[Chem.Mol]:
    """``n`` molecules as RDKit Mols (unsanitised: exactly what the model predicted).

    ``progress(done, total)`` counts reverse steps over all batches. With
    ``valence_aware`` the last step's bonds are the most probable ones within
    RDKit's valence limits (``EQGATDiffusion.sample``); the raw model's molecules
    of the same trajectories are then appended to ``raw_out`` when it is given.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got {n}, {batch_size}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    num_steps = len(model.step_schedule(steps))
    batches = [min(batch_size, n - k) for k in range(0, n, batch_size)]
    total = num_steps * len(batches)
    mols: list[Chem.Mol] = []
    for b, size in enumerate(batches):

        def tick(done: int, _: int, offset: int = b * num_steps) -> None:
            if progress is not None:
                progress(offset + done, total)

        samples = model.sample(
            size,
            num_atoms=num_atoms,
            steps=steps,
            sampler=sampler,
            generator=generator,
            progress=tick,
            valence_aware=valence_aware,
        )
        mols += [build_mol(m["atom_type"], m["charge"], m["bonds"], m["pos"]) for m in samples]
        if valence_aware and raw_out is not None:
            raw_out += [build_mol(m["atom_type"], m["charge"], m["bonds_raw"], m["pos"]) for m in samples]
    return mols


def sanitize_report(mol: Chem.Mol) -> str:
    """'' if RDKit sanitises a copy of ``mol``, else the reason."""
    try:
        Chem.SanitizeMol(Chem.Mol(mol))
    except Exception as exc:  # RDKit raises several exception types
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ""


def write_sdf(mols: list[Chem.Mol], path: str | Path) -> Path:
    """Write every molecule (none dropped) atomically; each gets ``geo3d_valid`` and ``geo3d_error`` properties."""
    path = Path(path)
    with atomic_write(path) as tmp:
        writer = Chem.SDWriter(str(tmp))
        writer.SetKekulize(False)  # bonds are already Kekulé; do not let the writer refuse a molecule
        for k, mol in enumerate(mols):
            mol = Chem.Mol(mol)
            error = sanitize_report(mol)
            mol.SetProp("_Name", f"geo3d_{k}")
            mol.SetIntProp("geo3d_valid", int(not error))
            mol.SetProp("geo3d_error", error or "-")
            mol.UpdatePropertyCache(strict=False)
            writer.write(mol)
        writer.close()
    return path


def draw_grid(mols: list[Chem.Mol], path: str | Path, per_row: int = 8, max_mols: int = 48) -> Path:
    """PNG grid of 2D depictions (heavy atoms) of the first ``max_mols`` molecules."""
    from rdkit.Chem import AllChem, Draw

    pictures, legends = [], []
    for k, mol in enumerate(mols[:max_mols]):
        m = Chem.Mol(mol)
        m.RemoveAllConformers()
        try:
            Chem.SanitizeMol(m)
            m = Chem.RemoveHs(m)
            legends.append(Chem.MolToSmiles(m))
        except Exception:
            legends.append(f"#{k} invalid")
        AllChem.Compute2DCoords(m)
        pictures.append(m)
    img = Draw.MolsToGridImage(pictures, molsPerRow=per_row, subImgSize=(250, 200), legends=legends)
    path = Path(path)
    img.save(str(path))
    return path


def load_train_smiles(net: torch.nn.Module) -> CanonicalSmiles | None:
    """Training SMILES for novelty: ``<checkpoint>.smiles.gz`` next to the checkpoint, if shipped.

    The file holds SMILES already in the metrics' canonical form
    (``canonical_smiles_set``), so loading skips re-canonicalising ~100k molecules.
    """
    import gzip

    path = Path(net.geo3d_checkpoint["path"])
    smiles_path = path.with_suffix(".smiles.gz")
    if not smiles_path.is_file():
        return None
    with gzip.open(smiles_path, "rt") as fh:
        return CanonicalSmiles(line.strip() for line in fh if line.strip())


def write_and_score(
    net: torch.nn.Module,
    mols: list[Chem.Mol],
    raw_mols: list[Chem.Mol],
    output: str | Path,
    png: str | Path | None = None,
    xtb_max_molecules: int = 20,
) -> tuple[Metrics, Metrics | None]:
    """Write ``mols`` as SDF (and a PNG grid), score them, and score ``raw_mols`` (the raw model's
    molecules of the same trajectories, when sampled valence-aware; else empty -> None).

    xTB relaxations (when tblite is installed) cost seconds per molecule: only
    ``xtb_max_molecules`` are relaxed.
    """
    write_sdf(mols, output)
    train_smiles = load_train_smiles(net)
    metrics = evaluate_molecules(mols, train_smiles=train_smiles, xtb_max_molecules=xtb_max_molecules)
    raw = None
    if raw_mols:
        raw = evaluate_molecules(raw_mols, train_smiles=train_smiles, xtb_max_molecules=xtb_max_molecules)
    if png is not None:
        draw_grid(mols, png)
    return metrics, raw
