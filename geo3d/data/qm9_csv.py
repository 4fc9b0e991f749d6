"""QM9 as qm9pack ships it: finding its CSV files and reading their rows, with errors naming file and line.

The columns read are ``Index`` (the QM9/GDB id), ``SMILES``, ``Elements`` and ``XYZ_Ang``
(B3LYP geometry, Å); :mod:`geo3d.data.qm9` turns the rows into a cached data set.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

_CSV_GLOB = "qm9_part*.csv"
_COLUMNS = ("Index", "SMILES", "Elements", "XYZ_Ang")


class QM9FormatError(ValueError):
    """A malformed QM9 CSV row; the message names the file and the line."""


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
