"""SDF files as molecule ``Data`` (layout of :mod:`geo3d.data.molecules`).

Every record is accounted for: a record RDKit cannot read, cannot sanitise, or
geo3d cannot represent raises :class:`SDFRecordError` naming the file, the
record number (1-based) and the line it starts on; with ``errors="warn"`` it
is skipped with a warning carrying the same message instead.
"""

from __future__ import annotations

import csv
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from rdkit import Chem, rdBase
from torch_geometric.data import Data

from geo3d.data.molecules import MoleculeError, mol_to_data
from geo3d.data.smiles import canonical_smiles


class SDFRecordError(MoleculeError):
    """A bad SDF record; the message names the file, the record number and its first line."""


def iter_sdf_blocks(path: str | os.PathLike) -> Iterator[tuple[int, int, str]]:
    """``(record number, first line, text)`` of each record of an SDF (records end at ``$$$$``).

    Numbers are 1-based; blank text between records (e.g. a trailing newline) is not a record.
    """
    record, start, lines = 0, 1, []
    with open(path, errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.rstrip("\r\n").strip() == "$$$$":
                record += 1
                yield record, start, "".join(lines)
                lines, start = [], lineno + 1
            else:
                lines.append(line)
    if "".join(lines).strip():
        yield record + 1, start, "".join(lines)  # last record without a closing $$$$


def _sdf_files(path_or_dir: str | os.PathLike) -> list[Path]:
    path = Path(path_or_dir)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".sdf")
        if not files:
            raise FileNotFoundError(f"{path}: no .sdf files in this folder")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SDF file or folder")
    return [path]


def _parse_record(
    block: str, where: str, sanitize: bool, kekulize: bool, center: bool
) -> tuple[Chem.Mol, Data]:
    if not block.strip():
        raise SDFRecordError(f"{where}: empty record")
    mol = Chem.MolFromMolBlock(block, sanitize=False, removeHs=False, strictParsing=True)
    if mol is None:
        head = block.strip().splitlines()[0][:60] if block.strip() else ""
        raise SDFRecordError(f"{where}: RDKit cannot parse the mol block (title {head!r})")
    if sanitize:
        try:
            Chem.SanitizeMol(mol)
        except Exception as exc:  # RDKit raises several MolSanitizeException subclasses
            raise SDFRecordError(f"{where}: sanitization failed ({exc})") from exc
    try:
        data = mol_to_data(mol, source=where, kekulize=kekulize)
    except MoleculeError as exc:
        raise SDFRecordError(str(exc)) from exc
    if center:
        data.pos = data.pos - data.pos.mean(dim=0, keepdim=True)
    data.name = mol.GetProp("_Name") if mol.HasProp("_Name") else ""
    return mol, data


def _smiles(mol: Chem.Mol) -> str:
    """The canonical key when RDKit can sanitise ``mol``, else RDKit's raw SMILES of it."""
    try:
        m = Chem.Mol(mol)
        Chem.SanitizeMol(m)
        return canonical_smiles(m)
    except Exception:  # unsanitisable (e.g. gdb9's 4-valent neutral N): keep a raw key
        return Chem.MolToSmiles(mol, isomericSmiles=False, canonical=True)


def _handle(exc: SDFRecordError, errors: str) -> None:
    if errors == "raise":
        raise exc
    warnings.warn(f"skipped: {exc}", stacklevel=3)


def read_sdf(
    path_or_dir: str | os.PathLike,
    errors: str = "raise",
    sanitize: bool = True,
    kekulize: bool = True,
    center: bool = False,
) -> list[Data]:
    """Every record of an SDF (or of every ``*.sdf`` in a folder, sorted by name) as ``Data``.

    Hydrogens stay as in the file (``removeHs=False``); molecules are sanitised, then
    Kekulized (``kekulize=False`` keeps aromatic bonds as class 4). Each ``Data`` has
    ``pos [N, 3]`` (Å, as in the file unless ``center``), ``atom_type [N]``, ``charge [N]``,
    ``edge_index [2, 2B]``, ``bond_type [2B]``, plus ``smiles`` (canonical, no stereo, no H)
    and ``name`` (the record's title line).

    Args:
        errors: ``"raise"`` (default) or ``"warn"`` (skip the record with a warning).

    Raises:
        FileNotFoundError: no such file, or a folder without ``.sdf`` files.
        SDFRecordError: a bad record; the message names file, record and line.
    """
    if errors not in ("raise", "warn"):
        raise ValueError(f"errors must be 'raise' or 'warn', got {errors!r}")
    out: list[Data] = []
    # RDKit's own log lines are muted: failures surface as our errors, with file and record
    with rdBase.BlockLogs():
        for path in _sdf_files(path_or_dir):
            for record, line, block in iter_sdf_blocks(path):
                where = f"{path}, record {record} (line {line})"
                try:
                    mol, data = _parse_record(block, where, sanitize, kekulize, center)
                except SDFRecordError as exc:
                    _handle(exc, errors)
                    continue
                data.smiles = canonical_smiles(mol) if sanitize else _smiles(mol)
                out.append(data)
    return out


_GDB_ID = re.compile(r"gdb_?(\d+)", re.IGNORECASE)


def read_uncharacterized(path: str | os.PathLike) -> set[int]:
    """The QM9 ids (1-based) listed in QM9's ``uncharacterized.txt`` (3,054 in the real file).

    Table rows are the lines whose first field is an integer followed by SMILES
    columns; the description and ``====`` rule lines around the table are skipped.
    """
    ids: set[int] = set()
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 3 and parts[0].isdigit():
                ids.add(int(parts[0]))
    return ids


def load_gdb9_sdf(
    path: str | os.PathLike,
    csv_path: str | os.PathLike | None = None,
    uncharacterized: str | os.PathLike | Iterable[int] | None = None,
    errors: str = "raise",
) -> list[Data]:
    """QM9 from MoleculeNet's ``gdb9.sdf`` read as EQGAT-diff / MiDi read it.

    Records are parsed *unsanitised* (``sanitize=False, removeHs=False``) and bonds and
    charges are taken as written (Kekulé in that file; an aromatic bond would stay
    class 4). Positions are centred on their plain mean. The QM9 id of a record is
    read from its title (``gdb_123``), else its record number. Each ``Data`` carries
    ``idx [1]`` (the id), ``smiles`` (canonical when RDKit can sanitise the molecule,
    else RDKit's raw SMILES) and, with ``csv_path`` (``gdb9.sdf.csv``), ``y [1, K]``:
    the K numeric columns of that CSV after ``mol_id``, in file order, matched by id.

    Args:
        uncharacterized: ids to exclude (1-based), or the path of ``uncharacterized.txt``.
        errors: ``"raise"`` or ``"warn"`` for unreadable records (see :func:`read_sdf`).

    Raises:
        SDFRecordError: an unreadable record (file, record, line), or, with ``csv_path``,
            a molecule missing from the CSV.
    """
    if isinstance(uncharacterized, (str, os.PathLike)):
        skip = read_uncharacterized(uncharacterized)
    else:
        skip = {int(i) for i in uncharacterized or ()}
    targets: dict[int, torch.Tensor] = {}
    if csv_path is not None:
        with open(csv_path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            for row in reader:
                m = _GDB_ID.fullmatch(row[0].strip())
                if m is None:
                    raise SDFRecordError(
                        f"{csv_path}, line {reader.line_num}: mol_id {row[0]!r} is not gdb_N"
                    )
                try:
                    targets[int(m.group(1))] = torch.tensor([[float(v) for v in row[1:]]])
                except ValueError as exc:
                    raise SDFRecordError(f"{csv_path}, line {reader.line_num}: {exc}") from None
        del header
    out: list[Data] = []
    with rdBase.BlockLogs():
        for record, line, block in iter_sdf_blocks(path):
            title = block.splitlines()[0].strip() if block else ""
            m = _GDB_ID.fullmatch(title)
            idx = int(m.group(1)) if m else record
            if idx in skip:
                continue
            where = f"{path}, record {record} (line {line})"
            try:
                mol, data = _parse_record(block, where, sanitize=False, kekulize=False, center=True)
            except SDFRecordError as exc:
                _handle(exc, errors)
                continue
            data.smiles = _smiles(mol)
            data.idx = torch.tensor([idx])
            if csv_path is not None:
                if idx not in targets:
                    raise SDFRecordError(f"{where}: id {idx} is not in {csv_path}")
                data.y = targets[idx]
            out.append(data)
    return out


# --------------------------------------------------------------- generated molecules, read as they are


@dataclass(frozen=True)
class UnreadableRecord:
    """A record of an SDF file that RDKit could not parse."""

    path: str
    record: int  # 1-based position of the record in the file
    line: int  # 1-based line where the record starts
    message: str

    def __str__(self) -> str:
        return f"{self.path}: record {self.record} (line {self.line}) could not be read: {self.message}"


def _parse_raw_record(text: str) -> Chem.Mol | None:
    supplier = Chem.SDMolSupplier()
    supplier.SetData(text, sanitize=False, removeHs=False, strictParsing=True)
    return supplier[0] if len(supplier) else None


def _parse_block(text: str) -> tuple[Chem.Mol | None, str]:
    """Parse one SDF record, returning RDKit's own complaint when it fails."""
    with rdBase.BlockLogs():
        mol = _parse_raw_record(text)
    if mol is not None:
        return mol, ""
    # RDKit says why only on its C++ stderr stream: parse again with file
    # descriptor 2 pointed at a temporary file and read the complaint back.
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            _parse_raw_record(text)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        log = tmp.read().decode(errors="replace")
    lines = [re.sub(r"^\[[0-9:]+\]\s*(ERROR:\s*)?", "", x).strip() for x in log.splitlines()]
    lines = [x for x in lines if x and not x.startswith("moving to the beginning of the next molecule")]
    return None, "; ".join(lines) or "RDKit could not parse the record"


def read_generated_sdf(path: str | Path) -> tuple[list[Chem.Mol | None], list[UnreadableRecord]]:
    """Every record of an SDF file, read with ``removeHs=False, sanitize=False``.

    A record RDKit cannot parse is ``None`` in the list (so it is counted, as
    an invalid molecule) and described in the error list with its record
    number and starting line. Raises ``FileNotFoundError`` for a missing file.
    Records are split by :func:`geo3d.data.sdf.iter_sdf_blocks`, as the training loader does.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SDF file")
    mols: list[Chem.Mol | None] = []
    errors: list[UnreadableRecord] = []
    for record, first_line, text in iter_sdf_blocks(path):
        mol, reason = _parse_block(text + "$$$$\n")
        if mol is None:
            # RDKit counts lines from the start of the record; report file lines
            reason = re.sub(
                r"on line (\d+)", lambda m, s=first_line: f"on line {s - 1 + int(m.group(1))}", reason
            )
            errors.append(UnreadableRecord(str(path), record, first_line, reason))
        mols.append(mol)
    return mols, errors
