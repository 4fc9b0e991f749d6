"""QM9 with explicit hydrogens, offline from the ``qm9pack`` wheel, as EQGAT-diff trains on it.

Source. ``qm9pack`` (``pip install 'geo3d[qm9]'``) ships the 130,831 QM9
molecules that passed the QM9 consistency check (ids 1..133,885 less the 3,054
"uncharacterized") as ``qm9pack/data/qm9_part{1,2,3}.csv`` with columns
``Index`` (the QM9/GDB id), ``SMILES``, ``Elements`` and ``XYZ_Ang`` (B3LYP
geometry, Å). qm9pack's own Python loader is broken (it imports
``pkg_resources``), so it is never imported: only its data folder is located.

Processing, one molecule at a time (:func:`process_qm9_molecule`):

1. an RDKit molecule from elements + coordinates;
2. bonds *and* formal charges from the geometry with
   ``rdDetermineBonds.DetermineBonds(mol, charge=0, useHueckel=True)`` (xyz2mol;
   the molecule is neutral overall, zwitterions get their charges). Extended
   Hückel connectivity, because RDKit's default connect-the-dots bonds the
   bridgeheads of strained small rings (bicyclobutanes, bicyclo[1.1.1]pentanes)
   and then fails on ~5 % of QM9; with Hückel it fails on 2 of the 130,831;
3. a check against the CSV SMILES: canonical SMILES without stereo and without
   H atoms (:func:`canonical_smiles`) must agree. When they do not, but the two
   molecules have the same skeleton (same heavy atoms, same bonded pairs, same
   H on each atom) the difference is only where the Lewis structure puts its
   double bonds and charges, i.e. two resonance forms of one molecule: such a
   molecule is kept with the geometry-derived form and counted under
   ``report["kept_with_note"]["resonance_form"]`` (``accept_resonance=False``
   excludes it instead);
4. Kekulé bonds and integer charges through :func:`~geo3d.data.molecules.mol_to_data`;
5. positions centred on their plain (unweighted) mean, as EQGAT-diff does.

Molecules are never dropped silently: each exclusion is counted by reason in a
report (``element_not_in_vocab``, ``bond_determination_failed``,
``reference_smiles_unparsable``, ``smiles_mismatch``, ``charge_out_of_range``,
``not_representable``) with a few example ids, printed at build time, stored in
the cache and exposed as ``QM9(...).report``.

Split (:func:`midi_split`): MiDi's / EQGAT-diff's exactly. MiDi shuffles the
133,885 rows of ``gdb9.sdf.csv`` with ``DataFrame.sample(frac=1,
random_state=42)``, i.e. ``numpy.random.RandomState(42).permutation(133885)``
(legacy MT19937), takes the first 100,000 as train, the next 20,497 as val and
the last 13,388 (``int(0.1 * 133885)``) as test, and only then drops the
uncharacterized molecules. Row ``k`` of that CSV is QM9 id ``k + 1``, so the
split is a function of the id alone and is applied *before* exclusion: the
molecules qm9pack lacks and those this module excludes are removed from each
split afterwards. Before our exclusions this gives MiDi's 97,734 / 20,042 /
13,055 (checked on the full set; after them 97,731 / 20,041 / 13,054). Within a split, molecules keep the shuffled order, so ``limit=k`` is a
uniformly random subset.

Cache: processed once into ``$GEO3D_CACHE/qm9/`` (default
``~/.cache/geo3d/qm9/``), a single torch file (concatenated tensors + offsets +
SMILES list + report) loadable with ``torch.load(weights_only=True)``, written
atomically. Every later ``QM9(...)`` only loads it.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import hashlib
import importlib.util
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem, RDLogger
from rdkit.Chem import rdDetermineBonds
from torch.utils.data import Dataset
from torch_geometric.data import Data

from geo3d.data.build_cache import cache_root
from geo3d.data.molecules import (
    ATOM_INDEX,
    CHARGE_MAX,
    CHARGE_MIN,
    MoleculeError,
    mol_to_data,
)
from geo3d.data.smiles import canonical_smiles
from geo3d.files import atomic_write

QM9_NUM_IDS = 133_885  # rows of gdb9.sdf.csv; MiDi's split is drawn over all of them
SPLITS: tuple[str, ...] = ("train", "val", "test")
EXCLUSION_REASONS: tuple[str, ...] = (
    "element_not_in_vocab",
    "bond_determination_failed",
    "reference_smiles_unparsable",
    "smiles_mismatch",
    "charge_out_of_range",
    "not_representable",
)
_CACHE_VERSION = 1
_N_EXAMPLES = 5
_CSV_GLOB = "qm9_part*.csv"
_COLUMNS = ("Index", "SMILES", "Elements", "XYZ_Ang")


class QM9FormatError(ValueError):
    """A malformed QM9 CSV row; the message names the file and the line."""


# --------------------------------------------------------------------------- locating the data


def default_cache_dir() -> Path:
    """``$GEO3D_CACHE/qm9`` if set, else ``~/.cache/geo3d/qm9``."""
    return cache_root() / "qm9"


def find_qm9_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder holding ``qm9_part*.csv``: ``root``, else ``$GEO3D_QM9_DIR``, else qm9pack's data.

    ``root`` may be the data folder itself or the qm9pack package folder
    (its ``data/`` is used). qm9pack is located with ``importlib.util.find_spec``
    and never imported (its loader needs ``pkg_resources``).

    Raises:
        FileNotFoundError: no CSV found; the message says how to get the data.
    """
    candidates: list[Path] = []
    if root is not None:
        candidates.append(Path(root))
    elif os.environ.get("GEO3D_QM9_DIR"):
        candidates.append(Path(os.environ["GEO3D_QM9_DIR"]))
    else:
        spec = importlib.util.find_spec("qm9pack")
        if spec is not None and spec.submodule_search_locations:
            candidates += [Path(p) for p in spec.submodule_search_locations]
    for cand in candidates:
        for folder in (cand, cand / "data"):
            if sorted(folder.glob(_CSV_GLOB)):
                return folder
    where = ", ".join(str(c) for c in candidates) or "nowhere (qm9pack is not installed)"
    raise FileNotFoundError(
        f"no QM9 CSV files ({_CSV_GLOB}) found in {where}; install the data with "
        "`pip install 'geo3d[qm9]'` (the qm9pack wheel), or point root= / GEO3D_QM9_DIR at a "
        "folder holding qm9_part1.csv ..."
    )


def qm9_csv_files(root: str | os.PathLike | None = None) -> list[Path]:
    """The QM9 CSV parts in order (part1, part2, ...)."""
    folder = find_qm9_dir(root)

    def part(p: Path) -> tuple[int, str]:
        digits = "".join(ch for ch in p.stem.rsplit("part", 1)[-1] if ch.isdigit())
        return (int(digits) if digits else 0, p.name)

    return sorted(folder.glob(_CSV_GLOB), key=part)


# A record: (QM9 id, CSV SMILES, Elements string, XYZ_Ang string, "file, line N").
Record = tuple[int, str, str, str, str]


def iter_qm9_records(files: Sequence[Path]) -> Iterator[Record]:
    """The raw rows of the QM9 CSVs, only the four columns used; parsing happens later.

    Raises:
        QM9FormatError: a missing column or a row whose ``Index`` is not an integer.
    """
    csv.field_size_limit(1 << 30)  # XYZ/frequency cells are long
    for path in files:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise QM9FormatError(f"{path}: empty file, expected a header with {_COLUMNS}")
            missing = [c for c in _COLUMNS if c not in header]
            if missing:
                raise QM9FormatError(f"{path}, line 1: header lacks the column(s) {missing}")
            col = [header.index(c) for c in _COLUMNS]
            width = max(col) + 1
            for row in reader:
                where = f"{path}, line {reader.line_num}"
                if not row:
                    continue
                if len(row) < width:
                    raise QM9FormatError(f"{where}: {len(row)} fields, expected at least {width}")
                try:
                    idx = int(row[col[0]])
                except ValueError:
                    raise QM9FormatError(f"{where}: Index {row[col[0]]!r} is not an integer") from None
                yield idx, row[col[1]], row[col[2]], row[col[3]], where


def parse_elements(text: str, where: str = "row") -> list[str]:
    """``"['C','H']"`` -> ``['C', 'H']``."""
    items = [t.strip().strip("'\"") for t in text.strip().strip("[]").split(",")]
    if not items or any(not t for t in items):
        raise QM9FormatError(f"{where}: cannot read Elements {text[:60]!r}")
    return items


def parse_xyz(text: str, n_atoms: int, where: str = "row") -> np.ndarray:
    """``"[[x,y,z],...]"`` -> ``[n_atoms, 3]`` float64 (Å)."""
    try:
        flat = np.array(text.replace("[", " ").replace("]", " ").split(","), dtype=np.float64)
    except ValueError:
        raise QM9FormatError(f"{where}: XYZ_Ang holds a non-number ({text[:60]!r}...)") from None
    if flat.size != 3 * n_atoms:
        raise QM9FormatError(f"{where}: XYZ_Ang has {flat.size} numbers, expected 3 x {n_atoms} atoms")
    if not np.isfinite(flat).all():
        raise QM9FormatError(f"{where}: XYZ_Ang has NaN or inf")
    return flat.reshape(n_atoms, 3)


# --------------------------------------------------------------------------- chemistry

_LIBC = None


@contextlib.contextmanager
def _quiet_fds() -> Iterator[None]:
    """Silence C-level stdout/stderr (YAeHMOP prints a warning per short O-H/N-H distance)."""
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL(None)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
    except (OSError, AttributeError, ValueError):  # no real fds (e.g. embedded): just run
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        _LIBC.fflush(None)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def mol_from_xyz(elements: Sequence[str], pos: np.ndarray) -> Chem.Mol:
    """A bond-less RDKit molecule with one conformer (``pos [N, 3]``, Å)."""
    rw = Chem.RWMol()
    for sym in elements:
        rw.AddAtom(Chem.Atom(sym))
    conf = Chem.Conformer(len(elements))
    for k, xyz in enumerate(np.asarray(pos, dtype=np.float64).tolist()):
        conf.SetAtomPosition(k, xyz)
    rw.AddConformer(conf, assignId=True)
    return rw.GetMol()


def derive_bonds(mol: Chem.Mol, charge: int = 0, use_hueckel: bool = True) -> Chem.Mol:
    """Bonds and formal charges from the 3D geometry (RDKit's xyz2mol), in a new molecule.

    Raises:
        ValueError: RDKit finds no valence-consistent bond assignment.
    """
    out = Chem.Mol(mol)
    with _quiet_fds():
        rdDetermineBonds.DetermineBonds(out, useHueckel=use_hueckel, charge=charge)
    return out


def _skeleton(mol: Chem.Mol) -> str:
    """Canonical SMILES of the graph with every bond single and no charges: identical for two
    Lewis structures of one molecule (same atoms, same bonded pairs, same H on each atom)."""
    rw = Chem.RWMol(Chem.AddHs(mol))
    for atom in rw.GetAtoms():
        atom.SetFormalCharge(0)
        atom.SetNoImplicit(True)
        atom.SetNumExplicitHs(0)
        atom.SetIsAromatic(False)
    for bond in rw.GetBonds():
        bond.SetBondType(Chem.BondType.SINGLE)
        bond.SetIsAromatic(False)
    rw.UpdatePropertyCache(strict=False)
    return Chem.MolToSmiles(rw, isomericSmiles=False, canonical=True)


def compare_to_smiles(mol: Chem.Mol, smiles: str) -> str:
    """``"match"``, ``"resonance"`` (same skeleton, other Lewis structure), ``"mismatch"`` or
    ``"unparsable"`` (RDKit cannot read ``smiles``)."""
    ref = Chem.MolFromSmiles(smiles)
    if ref is None:
        return "unparsable"
    if canonical_smiles(mol) == canonical_smiles(ref):
        return "match"
    return "resonance" if _skeleton(mol) == _skeleton(ref) else "mismatch"


# One processed molecule, as plain arrays (cheap to send between processes).
Processed = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]


def process_qm9_molecule(
    idx: int, smiles: str, elements: str, xyz: str, where: str = "row", accept_resonance: bool = True
) -> tuple[str, int, str, Processed | str]:
    """One CSV row -> ``("ok", idx, note, arrays)`` or ``("excluded", idx, reason, detail)``.

    ``arrays`` = ``(pos [N, 3] float32 (mean-centred), atom_type [N] int8,
    charge [N] int8, edge_index [2, 2B] int32 (both directions), bond_type [2B]
    int8, canonical SMILES)``; ``note`` is ``""`` or ``"resonance_form"``.

    Raises:
        QM9FormatError: unreadable Elements / XYZ_Ang (a broken file, not a molecule to skip).
    """
    symbols = parse_elements(elements, where)
    pos = parse_xyz(xyz, len(symbols), where)
    bad = [s for s in symbols if s not in ATOM_INDEX]
    if bad:
        return "excluded", idx, "element_not_in_vocab", f"element {bad[0]!r}"
    try:
        mol = derive_bonds(mol_from_xyz(symbols, pos), charge=0)
    except Exception as exc:  # RDKit raises ValueError/RuntimeError subclasses here
        return "excluded", idx, "bond_determination_failed", str(exc).splitlines()[0][:160]
    verdict = compare_to_smiles(mol, smiles)
    note = ""
    if verdict == "unparsable":
        return "excluded", idx, "reference_smiles_unparsable", smiles
    if verdict == "mismatch" or (verdict == "resonance" and not accept_resonance):
        return "excluded", idx, "smiles_mismatch", f"derived {canonical_smiles(mol)} vs csv {smiles}"
    if verdict == "resonance":
        note = "resonance_form"
    charges = [a.GetFormalCharge() for a in mol.GetAtoms()]
    if any(not CHARGE_MIN <= q <= CHARGE_MAX for q in charges):
        return "excluded", idx, "charge_out_of_range", f"charges {sorted(set(charges))}"
    try:
        data = mol_to_data(mol, source=f"QM9 id {idx}")
    except MoleculeError as exc:
        return "excluded", idx, "not_representable", str(exc)
    p = data.pos.double()
    p = (p - p.mean(dim=0, keepdim=True)).float()  # plain mean, as EQGAT-diff
    arrays = (
        p.numpy(),
        data.atom_type.numpy().astype(np.int8),
        data.charge.numpy().astype(np.int8),
        data.edge_index.numpy().astype(np.int32),
        data.bond_type.numpy().astype(np.int8),
        canonical_smiles(mol),
    )
    return "ok", idx, note, arrays


def _process_record(args: tuple[Record, bool]) -> tuple[str, int, str, Processed | str]:
    (idx, smiles, elements, xyz, where), accept_resonance = args
    return process_qm9_molecule(idx, smiles, elements, xyz, where, accept_resonance)


def _worker_init() -> None:
    RDLogger.DisableLog("rdApp.*")
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- split


def midi_split(
    n_total: int = QM9_NUM_IDS, n_train: int = 100_000, test_fraction: float = 0.1, seed: int = 42
) -> dict[str, np.ndarray]:
    """MiDi's QM9 split of ``n_total`` rows: 0-based row numbers per split, in shuffled order.

    ``perm = numpy.random.RandomState(seed).permutation(n_total)`` (what pandas'
    ``DataFrame.sample(frac=1, random_state=seed)`` draws); train = ``perm[:n_train]``,
    test = the last ``int(test_fraction * n_total)``, val = the rest in between.
    For QM9, row ``k`` is molecule id ``k + 1``.
    """
    n_test = int(test_fraction * n_total)
    n_val = n_total - n_train - n_test
    if n_val < 0:
        raise ValueError(f"n_train={n_train} + n_test={n_test} exceed n_total={n_total}")
    perm = np.random.RandomState(seed).permutation(n_total)
    return {
        "train": perm[:n_train],
        "val": perm[n_train : n_train + n_val],
        "test": perm[n_train + n_val :],
    }


# --------------------------------------------------------------------------- cache


def _cache_key(files: Sequence[Path], accept_resonance: bool, n_total: int, n_train: int) -> str:
    ident = {
        "version": _CACHE_VERSION,
        "files": [[p.name, p.stat().st_size] for p in files],
        "bonds": "DetermineBonds(useHueckel=True, charge=0)",
        "accept_resonance": accept_resonance,
        "split": [n_total, n_train],
        "rdkit": Chem.rdBase.rdkitVersion,
    }
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]


def format_report(report: dict) -> str:
    """A human-readable summary of a QM9 build report."""
    lines = [
        f"QM9 from {report['source']}: {report['total']} molecules read, {report['kept']} kept, "
        f"{report['total'] - report['kept']} excluded ({report['seconds']:.0f} s)"
    ]
    for reason, n in report["excluded"].items():
        if n:
            ex = ", ".join(f"{i} ({d})" for i, d in report["examples"].get(reason, [])[:3])
            lines.append(f"  excluded {reason}: {n}   e.g. {ex}")
    for note, n in report["kept_with_note"].items():
        ex = ", ".join(f"{i} ({d})" for i, d in report["examples"].get(note, [])[:3])
        lines.append(f"  kept, {note}: {n}   e.g. {ex}")
    raw, kept = report["split_before_exclusion"], report["split"]
    lines.append(
        "  split (before -> after our exclusions): " + ", ".join(f"{s} {raw[s]} -> {kept[s]}" for s in SPLITS)
    )
    return "\n".join(lines)


def build_qm9_cache(
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
    accept_resonance: bool = True,
    progress: bool = True,
    verbose: bool = True,
    force: bool = False,
    n_total: int = QM9_NUM_IDS,
    n_train: int = 100_000,
) -> Path:
    """Process every QM9 molecule once and write the cache file; returns its path.

    A no-op when a cache for the same source files and settings exists. ``num_workers``
    processes (default: all CPUs, at most 8; ``0`` = in this process). ``n_total`` and
    ``n_train`` parameterise :func:`midi_split` (the defaults are MiDi's).

    Raises:
        FileNotFoundError: no QM9 data (see :func:`find_qm9_dir`).
        QM9FormatError: a malformed CSV row (file and line in the message).
    """
    files = qm9_csv_files(root)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"qm9_v{_CACHE_VERSION}_{_cache_key(files, accept_resonance, n_total, n_train)}.pt"
    if path.is_file() and not force:
        return path
    start = time.perf_counter()
    records = list(iter_qm9_records(files))
    ids = np.array([r[0] for r in records], dtype=np.int64)
    if len(ids) == 0:
        raise QM9FormatError(f"{files[0].parent}: the QM9 CSV files hold no molecules")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise QM9FormatError(f"{files[0].parent}: QM9 id {uniq[counts > 1][0]} occurs more than once")
    if ids.min() < 1 or ids.max() > n_total:
        raise QM9FormatError(
            f"{files[0].parent}: QM9 ids must lie in 1..{n_total}, found {ids.min()}..{ids.max()}"
        )

    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, 8)
    jobs = ((r, accept_resonance) for r in records)
    results: list[tuple[str, int, str, Processed | str]] = []
    with contextlib.ExitStack() as stack:
        if num_workers > 1:
            # spawn, not fork: forking a process that runs torch/OpenMP threads can deadlock
            pool = stack.enter_context(mp.get_context("spawn").Pool(num_workers, initializer=_worker_init))
            it: Iterable = pool.imap(_process_record, jobs, chunksize=64)
        else:
            RDLogger.DisableLog("rdApp.*")
            it = map(_process_record, jobs)
        bar = None
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            bar = stack.enter_context(
                Progress(
                    "[progress.description]{task.description}",
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeRemainingColumn(),
                    auto_refresh=False,  # refresh only from this thread, between molecules
                    transient=True,
                )
            )
            task = bar.add_task("QM9: bonds from geometry", total=len(records))
        for k, res in enumerate(it):
            results.append(res)
            if bar is not None and (k % 200 == 199 or k == len(records) - 1):
                bar.update(task, completed=k + 1, refresh=True)

    store, report = _assemble(results, ids, n_total, n_train)
    report["source"] = str(files[0].parent)
    report["seconds"] = round(time.perf_counter() - start, 1)
    store["report"] = report
    store["meta"] = {
        "version": _CACHE_VERSION,
        "files": [p.name for p in files],
        "bonds": "rdDetermineBonds.DetermineBonds(useHueckel=True, charge=0), then Kekulize",
        "centring": "plain mean of positions",
        "split": f"MiDi: RandomState(42).permutation({n_total}), {n_train} train, int(0.1 n) test, "
        "rest val; applied to ids before exclusion",
        "accept_resonance": accept_resonance,
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:  # readers never see a half-written cache
        torch.save(store, tmp)
    if verbose:
        print(format_report(report))
        print(f"  cache: {path}")
    return path


def _assemble(
    results: list[tuple[str, int, str, Processed | str]], ids: np.ndarray, n_total: int, n_train: int
) -> tuple[dict, dict]:
    excluded = dict.fromkeys(EXCLUSION_REASONS, 0)
    notes: dict[str, int] = {}
    examples: dict[str, list] = {}
    kept: list[tuple[int, Processed]] = []
    for status, idx, tag, payload in results:
        if status == "ok":
            if tag:
                notes[tag] = notes.get(tag, 0) + 1
                if len(examples.setdefault(tag, [])) < _N_EXAMPLES:
                    examples[tag].append([idx, payload[5]])
            kept.append((idx, payload))
        else:
            excluded[tag] = excluded.get(tag, 0) + 1
            if len(examples.setdefault(tag, [])) < _N_EXAMPLES:
                examples[tag].append([idx, payload])

    # Split by id (before exclusion), remembering the shuffled rank for ordering.
    split_code = np.full(n_total + 1, -1, dtype=np.int8)
    rank = np.zeros(n_total + 1, dtype=np.int64)
    for code, name in enumerate(SPLITS):
        rows = midi_split(n_total, n_train)[name]
        split_code[rows + 1] = code
        rank[rows + 1] = np.arange(len(rows))
    present = split_code[ids]

    n_atoms = np.array([p[1].shape[0] for _, p in kept], dtype=np.int64)
    n_edges = np.array([p[4].shape[0] for _, p in kept], dtype=np.int64)
    kept_ids = np.array([i for i, _ in kept], dtype=np.int64)

    def cat(k: int, dtype: torch.dtype, axis: int = 0) -> torch.Tensor:
        if not kept:
            return torch.zeros((0, 3) if k == 0 else (2, 0) if k == 3 else (0,), dtype=dtype)
        return torch.from_numpy(np.concatenate([p[k] for _, p in kept], axis=axis)).to(dtype)

    def ptr(counts: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))

    store = {
        "pos": cat(0, torch.float32),
        "atom_type": cat(1, torch.int8),
        "charge": cat(2, torch.int8),
        "node_ptr": ptr(n_atoms),
        "edge_index": cat(3, torch.int32, axis=1),
        "bond_type": cat(4, torch.int8),
        "edge_ptr": ptr(n_edges),
        "idx": torch.from_numpy(kept_ids),
        "split": torch.from_numpy(split_code[kept_ids] if kept else np.zeros(0, np.int8)),
        "rank": torch.from_numpy(rank[kept_ids] if kept else np.zeros(0, np.int64)),
        "smiles": [p[5] for _, p in kept],
    }
    after = store["split"].numpy()
    report = {
        "total": len(results),
        "kept": len(kept),
        "excluded": excluded,
        "kept_with_note": notes,
        "examples": examples,
        "split_before_exclusion": {s: int((present == c).sum()) for c, s in enumerate(SPLITS)},
        "split": {s: int((after == c).sum()) for c, s in enumerate(SPLITS)},
    }
    return store, report


def load_qm9_cache(path: str | os.PathLike) -> dict:
    """The cache dict (see :func:`build_qm9_cache`), loaded with ``weights_only=True``."""
    return torch.load(path, weights_only=True)


def _gather_ranges(ptr: torch.Tensor, sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Element indices of the ranges ``ptr[s]:ptr[s+1]`` for ``s`` in ``sel``, and their new ptr."""
    starts, lens = ptr[sel], ptr[sel + 1] - ptr[sel]
    new_ptr = torch.zeros(len(sel) + 1, dtype=torch.long)
    new_ptr[1:] = torch.cumsum(lens, 0)
    index = torch.repeat_interleave(starts - new_ptr[:-1], lens) + torch.arange(int(new_ptr[-1]))
    return index, new_ptr


# --------------------------------------------------------------------------- dataset


class QM9(Dataset):
    """One split of QM9 (explicit H) as PyG ``Data``, built once into a cache (module docstring).

    Each item: ``pos [N, 3]`` float32 (Å, mean-centred), ``atom_type [N]`` (index into
    ``ATOM_VOCAB``), ``charge [N]`` (formal charge), ``edge_index [2, 2B]`` (both
    directions), ``bond_type [2B]`` (1..3, Kekulé), ``smiles`` (canonical, from the
    derived molecule, :func:`canonical_smiles`), ``idx`` (QM9 id, ``[1]``).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: folder of ``qm9_part*.csv`` (default: ``$GEO3D_QM9_DIR``, else qm9pack's data).
        cache_dir: default ``$GEO3D_CACHE/qm9`` or ``~/.cache/geo3d/qm9``.
        limit: keep only the first ``limit`` molecules of the split (a random subset,
            since splits are in shuffled order). The full cache is still built once.
        num_workers, progress, accept_resonance: passed to :func:`build_qm9_cache`.
        transform: optional callable applied to each ``Data``.
    """

    def __init__(
        self,
        split: str = "train",
        root: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        limit: int | None = None,
        num_workers: int | None = None,
        progress: bool = True,
        accept_resonance: bool = True,
        transform=None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.transform = transform
        self.cache_path = build_qm9_cache(
            root, cache_dir, num_workers=num_workers, accept_resonance=accept_resonance, progress=progress
        )
        store = load_qm9_cache(self.cache_path)
        self.report: dict = store["report"]
        code = SPLITS.index(split)
        mols = (store["split"] == code).nonzero().flatten()
        mols = mols[torch.argsort(store["rank"][mols])]
        if limit is not None:
            mols = mols[:limit]
        # Keep only this split's rows (the cache holds all three).
        nodes, self._node_ptr = _gather_ranges(store["node_ptr"], mols)
        edges, self._edge_ptr = _gather_ranges(store["edge_ptr"], mols)
        self._pos = store["pos"][nodes]
        self._atom_type = store["atom_type"][nodes]
        self._charge = store["charge"][nodes]
        self._edge_index = store["edge_index"][:, edges]
        self._bond_type = store["bond_type"][edges]
        self.idx: torch.Tensor = store["idx"][mols]
        self.smiles: list[str] = [store["smiles"][m] for m in mols.tolist()]

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> Data:
        if not -len(self) <= i < len(self):
            raise IndexError(f"QM9 {self.split}: index {i} out of range for {len(self)} molecules")
        i = i % len(self)
        a, b = int(self._node_ptr[i]), int(self._node_ptr[i + 1])
        e, f = int(self._edge_ptr[i]), int(self._edge_ptr[i + 1])
        data = Data(
            pos=self._pos[a:b].clone(),
            atom_type=self._atom_type[a:b].long(),
            charge=self._charge[a:b].long(),
            edge_index=self._edge_index[:, e:f].long(),
            bond_type=self._bond_type[e:f].long(),
            smiles=self.smiles[i],
            idx=self.idx[i : i + 1].clone(),
            num_nodes=b - a,
        )
        return self.transform(data) if self.transform is not None else data

    def __repr__(self) -> str:
        return f"QM9({self.split}, {len(self)} molecules)"
