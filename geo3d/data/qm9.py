"""QM9 with explicit hydrogens, offline from the ``qm9pack`` wheel, as EQGAT-diff trains on it.

Source. ``qm9pack`` (``pip install 'geo3d[qm9]'``) ships the 130,831 QM9
molecules that passed the QM9 consistency check (ids 1..133,885 less the 3,054
"uncharacterized") as ``qm9pack/data/qm9_part{1,2,3}.csv`` with columns
``Index`` (the QM9/GDB id), ``SMILES``, ``Elements`` and ``XYZ_Ang`` (B3LYP
geometry, Å). qm9pack's own Python loader is broken (it imports
``pkg_resources``), so it is never imported: only its data folder is located.

Processing, one molecule at a time (:func:`geo3d.data.qm9_molecule.process_qm9_molecule`;
the CSV files and rows are read by :mod:`geo3d.data.qm9_csv`, this module holds the
split, the cache and the data set):

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

Over 400 lines because about 50 of them are this account, and the processing, the split and the
cache are one pipeline read top to bottom (the CSV reading and the molecule building already live
in ``qm9_csv.py`` and ``qm9_molecule.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem, RDLogger
from torch.utils.data import Dataset
from torch_geometric.data import Data

from geo3d.data.build_cache import cache_root
from geo3d.data.qm9_csv import QM9FormatError, Record, iter_qm9_records, qm9_csv_files
from geo3d.data.qm9_molecule import Processed, process_qm9_molecule
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


# --------------------------------------------------------------------------- locating the data


def default_cache_dir() -> Path:
    """``$GEO3D_CACHE/qm9`` if set, else ``~/.cache/geo3d/qm9``."""
    return cache_root() / "qm9"


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
    if verbose:  # the bar below is invisible when output goes to a file: say what the wait is for
        print(
            f"QM9: bonds from geometry for {len(records):,} molecules on {max(num_workers, 1)} process(es), "
            f"once per machine (about 15 min per core); cache: {path}",
            flush=True,
        )
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
