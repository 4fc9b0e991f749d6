"""``read_point_cloud``: a user's own scan as PyG ``Data`` (``pos``, and ``normal`` when the file has them).

Formats (chosen by the extension; plain numpy, no mesh library needed):

- PLY (``.ply``): ``ascii``, ``binary_little_endian`` or ``binary_big_endian``; the
  ``vertex`` element must have ``x``, ``y``, ``z`` (any scalar type); ``nx ny nz``
  become ``normal``; other vertex properties (colour, intensity, ...) and other
  elements (faces, edges) are ignored. Elements before ``vertex`` are skipped,
  in binary files only if they have no list properties.
- XYZ / TXT / CSV (``.xyz``, ``.txt``, ``.csv``): one point a line, 3 values
  (``x y z``) or 6 (``x y z nx ny nz``), separated by whitespace or commas; ``#``
  starts a comment; blank lines are skipped. Every line must have as many values
  as the first.
- NPY (``.npy``): a numeric array ``[N, 3]`` or ``[N, 6]`` (the last 3 columns are normals).

Anything malformed raises ``ScanFileError`` naming the file and the line (text),
vertex (binary PLY), header line or field: a wrong number of values, a value
that is not a number, NaN or inf, no points, a missing ``x``/``y``/``z``, a binary
body shorter than its header says, an unsupported format or extension.
Coordinates are returned as float32: subtract a large offset (e.g. UTM
eastings) before saving if millimetres matter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from geo3d.data.pointcloud_files import PointCloudFileError

SUFFIXES = (".ply", ".xyz", ".txt", ".csv", ".npy")
# fmt: off
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
# fmt: on
_PLY_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


class ScanFileError(PointCloudFileError):
    """A malformed scan file; the message names the file and the line, vertex or field."""


def read_point_cloud(path: str | Path) -> Data:
    """Read a scan: ``pos [N, 3]`` float32, plus ``normal [N, 3]`` float32 when the file has normals.

    Args:
        path: a ``.ply``, ``.xyz``, ``.txt``, ``.csv`` or ``.npy`` file (see the module docstring).

    Raises:
        ScanFileError: the file is missing, malformed or of an unsupported kind.
    """
    path = Path(path)
    if not path.is_file():
        raise ScanFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".ply":
        pos, normal = _read_ply(path)
    elif suffix == ".npy":
        pos, normal = _read_npy(path)
    elif suffix in SUFFIXES:
        pos, normal = _read_text(path)
    else:
        raise ScanFileError(f"{path}: unsupported extension {suffix!r}; geo3d reads {', '.join(SUFFIXES)}")
    data = Data(pos=torch.from_numpy(pos))
    if normal is not None:
        data.normal = torch.from_numpy(normal)
    return data


def _finite(path: Path, table: np.ndarray, where) -> tuple[np.ndarray, np.ndarray | None]:
    """Split ``[N, 3|6]`` into float32 pos/normal; ``where(row)`` names a bad row (line or vertex)."""
    if len(table) == 0:
        raise ScanFileError(f"{path}: no points")
    table = table.astype(np.float32)
    bad = ~np.isfinite(table)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        what = "coordinate" if col < 3 else "normal"
        raise ScanFileError(f"{path}, {where(row)}: NaN or inf {what} ({table[row, col]})")
    normal = np.ascontiguousarray(table[:, 3:6]) if table.shape[1] == 6 else None
    return np.ascontiguousarray(table[:, :3]), normal


# --- text ----------------------------------------------------------------------------------------------------


def _read_text(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ScanFileError(f"{path}: not a text file ({exc})") from exc
    rows, line_of = [], []
    for k, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")] if "," in line else line.split()
        if not rows and len(fields) not in (3, 6):
            raise ScanFileError(
                f"{path}, line {k}: expected 3 (x y z) or 6 (x y z nx ny nz) values, got {len(fields)}"
            )
        if rows and len(fields) != len(rows[0]):
            raise ScanFileError(
                f"{path}, line {k}: expected {len(rows[0])} values (as on line {line_of[0]}), got {len(fields)}"
            )
        rows.append(fields)
        line_of.append(k)
    if not rows:
        raise ScanFileError(f"{path}: no points")
    table = _numbers(path, rows, lambda i: f"line {line_of[i]}")
    return _finite(path, table.reshape(len(rows), -1), lambda i: f"line {line_of[i]}")


def _numbers(path: Path, rows: list[list[str]], where) -> np.ndarray:
    """Rows of strings to float64; on failure find and name the first bad value."""
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        for i, fields in enumerate(rows):
            for j, f in enumerate(fields):
                try:
                    float(f)
                except ValueError:
                    raise ScanFileError(f"{path}, {where(i)}: value {j + 1} is not a number: {f!r}") from None
        raise


# --- numpy ---------------------------------------------------------------------------------------------------


def _read_npy(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ScanFileError(f"{path}: not a valid .npy array ({exc})") from exc
    if not isinstance(array, np.ndarray):
        raise ScanFileError(
            f"{path}: holds several arrays (.npz?); save one [N, 3] or [N, 6] array with np.save"
        )
    if array.dtype.kind not in "fiu":
        raise ScanFileError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] not in (3, 6):
        raise ScanFileError(f"{path}: expected shape [N, 3] or [N, 6], got {list(array.shape)}")
    return _finite(path, array, lambda i: f"row {i}")


# --- PLY -----------------------------------------------------------------------------------------------------


def _ply_header(path: Path, raw: bytes) -> tuple[str, list[tuple[str, int, list]], int, int]:
    """Parse the header: (format, [(element, count, [(type or 'list', name)])], body offset, lines)."""
    if not raw.startswith(b"ply"):
        raise ScanFileError(f"{path}: not a PLY file (line 1 is not 'ply')")
    end = raw.find(b"end_header")
    if end < 0:
        raise ScanFileError(f"{path}: PLY header has no 'end_header' line")
    newline = raw.find(b"\n", end)
    body = len(raw) if newline < 0 else newline + 1
    try:
        lines = raw[:end].decode("ascii").splitlines()
    except UnicodeDecodeError as exc:
        raise ScanFileError(f"{path}: PLY header is not ASCII ({exc})") from exc
    fmt, elements = None, []
    for k, line in enumerate(lines[1:], start=2):
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format" and len(tok) == 3:
            if tok[1] not in _PLY_FORMATS:
                raise ScanFileError(
                    f"{path}, line {k}: unsupported PLY format {tok[1]!r} (geo3d reads {', '.join(_PLY_FORMATS)})"
                )
            fmt = tok[1]
        elif tok[0] == "element" and len(tok) == 3:
            if not tok[2].isdigit():
                raise ScanFileError(
                    f"{path}, line {k}: element count {tok[2]!r} is not a non-negative integer"
                )
            elements.append((tok[1], int(tok[2]), []))
        elif tok[0] == "property" and elements and (len(tok) == 3 or (len(tok) == 5 and tok[1] == "list")):
            types = tok[2:4] if tok[1] == "list" else tok[1:2]
            for t in types:
                if t not in _PLY_TYPES:
                    raise ScanFileError(f"{path}, line {k}: unknown property type {t!r}")
            elements[-1][2].append(("list" if tok[1] == "list" else _PLY_TYPES[tok[1]], tok[-1]))
        else:
            raise ScanFileError(f"{path}, line {k}: unexpected header line {line!r}")
    if fmt is None:
        raise ScanFileError(f"{path}: PLY header has no 'format' line")
    return fmt, elements, body, len(lines) + 1


def _read_ply(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    raw = path.read_bytes()
    fmt, elements, offset, header_lines = _ply_header(path, raw)
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise ScanFileError(f"{path}: PLY header has no 'vertex' element (has {names})")
    _, count, props = elements[names.index("vertex")]
    prop_names = [n for _, n in props]
    for axis in ("x", "y", "z"):
        if axis not in prop_names:
            raise ScanFileError(f"{path}: the 'vertex' element has no {axis!r} property (has {prop_names})")
    if any(t == "list" for t, _ in props):
        raise ScanFileError(f"{path}: list properties in the 'vertex' element are not supported")
    if len(set(prop_names)) != len(prop_names):
        raise ScanFileError(f"{path}: the 'vertex' element repeats a property name ({prop_names})")
    wanted = ["x", "y", "z"] + (["nx", "ny", "nz"] if {"nx", "ny", "nz"} <= set(prop_names) else [])
    before = elements[: names.index("vertex")]
    if fmt == "ascii":
        lines = raw[offset:].decode("ascii", errors="replace").splitlines()
        skip = sum(c for _, c, _ in before)
        start = header_lines + 1 + skip  # file line number of the first vertex
        rows = [line.split() for line in lines[skip : skip + count]]
        if len(rows) < count:
            raise ScanFileError(f"{path}: the body ends after {len(rows)} of {count} vertices")
        for i, row in enumerate(rows):
            if len(row) != len(props):
                raise ScanFileError(
                    f"{path}, line {start + i}: expected {len(props)} values ({' '.join(prop_names)}), got {len(row)}"
                )
        table = _numbers(path, rows, lambda i: f"line {start + i}").reshape(count, len(props))
        table = table[:, [prop_names.index(n) for n in wanted]]
        return _finite(path, table, lambda i: f"line {start + i}")
    endian = _PLY_FORMATS[fmt]
    for name, c, p in before:
        if any(t == "list" for t, _ in p):
            raise ScanFileError(
                f"{path}: element {name!r} before 'vertex' has list properties (not supported)"
            )
        offset += c * np.dtype([(n, endian + t) for t, n in p]).itemsize
    dtype = np.dtype([(n, endian + t) for t, n in props])
    if len(raw) - offset < count * dtype.itemsize:
        raise ScanFileError(
            f"{path}: truncated binary body: {count} vertices need {count * dtype.itemsize} bytes, "
            f"the file has {max(len(raw) - offset, 0)} after the header"
        )
    vertex = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    table = np.stack([vertex[n].astype(np.float64) for n in wanted], 1) if count else np.zeros((0, 3))
    return _finite(path, table, lambda i: f"vertex {i}")
