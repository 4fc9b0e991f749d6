"""Readers for the public point-cloud sets in their distributed formats (a local copy; nothing is downloaded).

- ModelNet40, ``modelnet40_normal_resampled``: ``modelnet40_shape_names.txt``,
  ``modelnet40_{train,test}.txt`` (ids like ``airplane_0001``) and
  ``<class>/<id>.txt`` with one ``x,y,z,nx,ny,nz`` line per point.
- ModelNet40, ``modelnet40_ply_hdf5_2048``: ``{train,test}_files.txt`` listing
  ``ply_data_*.h5`` files with ``data [B, 2048, 3]`` and ``label [B, 1]`` (needs h5py).
- ShapeNetPart, ``shapenetcore_partanno_segmentation_benchmark_v0_normal``:
  ``synsetoffset2category.txt``, ``<synset>/<token>.txt`` with ``x y z nx ny nz part``
  lines, and ``train_test_split/shuffled_{train,val,test}_file_list.json``.

Samples are PyG ``Data`` like ``geo3d.data.Shapes``: ``pos``, ``normal``, ``y``
(and ``part`` for ShapeNetPart). Malformed files raise ``PointCloudFileError``
naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data


class PointCloudFileError(ValueError):
    """A malformed or missing file of a point-cloud data set; names the file (and line)."""


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise PointCloudFileError(f"{path}: missing (is the data set root right?)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _numeric_table(path: Path, columns: int, sep: str | None) -> np.ndarray:
    rows = []
    for k, line in enumerate(_lines(path), start=1):
        fields = line.split(sep) if sep else line.split()
        if len(fields) != columns:
            raise PointCloudFileError(f"{path}, line {k}: expected {columns} values, got {len(fields)}")
        try:
            rows.append([float(f) for f in fields])
        except ValueError as exc:
            raise PointCloudFileError(f"{path}, line {k}: not a number ({exc})") from exc
    if not rows:
        raise PointCloudFileError(f"{path}: no points")
    table = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(table).all():
        bad = int(np.flatnonzero(~np.isfinite(table).all(1))[0]) + 1
        raise PointCloudFileError(f"{path}, line {bad}: NaN or inf")
    return table


class ModelNet40(Dataset):
    """ModelNet40 from a local copy of ``modelnet40_normal_resampled`` or ``modelnet40_ply_hdf5_2048``.

    Args:
        root: the folder holding the files above.
        split: ``"train"`` or ``"test"``.
        num_points: keep the first ``num_points`` points of each shape (the files are
            already uniformly resampled; None keeps all).
        format: ``"normal_resampled"`` or ``"hdf5"`` (default: detected from the files).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        num_points: int | None = 1024,
        format: str | None = None,
        transform=None,
    ) -> None:
        self.root, self.num_points, self.transform = Path(root), num_points, transform
        if split not in ("train", "test"):
            raise ValueError(f"ModelNet40: split must be train or test, got {split!r}")
        if format is None:
            format = "hdf5" if (self.root / f"{split}_files.txt").is_file() else "normal_resampled"
        if format == "normal_resampled":
            self.classes = _lines(self.root / "modelnet40_shape_names.txt")
            self.ids = _lines(self.root / f"modelnet40_{split}.txt")
            self._h5 = None
        elif format == "hdf5":
            self._h5 = self._read_h5(split)
        else:
            raise ValueError(f"ModelNet40: format must be normal_resampled or hdf5, got {format!r}")

    def _read_h5(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            import h5py
        except ImportError as exc:
            raise ImportError("ModelNet40 hdf5 files need h5py: pip install h5py") from exc
        data, labels = [], []
        for name in _lines(self.root / f"{split}_files.txt"):
            path = self.root / Path(name).name
            if not path.is_file():
                raise PointCloudFileError(f"{path}: listed in {split}_files.txt but missing")
            with h5py.File(path, "r") as fh:
                if "data" not in fh or "label" not in fh:
                    raise PointCloudFileError(f"{path}: needs datasets 'data' and 'label', has {list(fh)}")
                data.append(np.asarray(fh["data"], dtype=np.float32))
                labels.append(np.asarray(fh["label"]).reshape(-1).astype(np.int64))
        names = self.root / "shape_names.txt"
        self.classes = _lines(names) if names.is_file() else [str(k) for k in range(40)]
        return np.concatenate(data), np.concatenate(labels)

    def __len__(self) -> int:
        return len(self._h5[1]) if self._h5 is not None else len(self.ids)

    def __getitem__(self, k: int) -> Data:
        if self._h5 is not None:
            pos = torch.from_numpy(self._h5[0][k][: self.num_points])
            data = Data(pos=pos, y=torch.tensor([int(self._h5[1][k])]))
        else:
            shape_id = self.ids[k]
            cls = shape_id.rsplit("_", 1)[0]
            if cls not in self.classes:
                raise PointCloudFileError(f"{self.root}: shape {shape_id!r} names an unknown class {cls!r}")
            table = _numeric_table(self.root / cls / f"{shape_id}.txt", 6, ",")[: self.num_points]
            data = Data(
                pos=torch.from_numpy(table[:, :3].copy()),
                normal=torch.from_numpy(table[:, 3:].copy()),
                y=torch.tensor([self.classes.index(cls)]),
            )
        return self.transform(data) if self.transform is not None else data


class ShapeNetPart(Dataset):
    """ShapeNetPart (16 categories, 50 parts) from a local ``shapenetcore_partanno_segmentation_benchmark_v0_normal``.

    ``y`` is the category index (in ``synsetoffset2category.txt`` order); ``part``
    the global part label of each point as stored in the files (0-49).
    """

    def __init__(
        self, root: str | Path, split: str = "train", num_points: int | None = 2048, transform=None
    ) -> None:
        self.root, self.num_points, self.transform = Path(root), num_points, transform
        if split not in ("train", "val", "test"):
            raise ValueError(f"ShapeNetPart: split must be train, val or test, got {split!r}")
        cat_file = self.root / "synsetoffset2category.txt"
        self.categories, self.synsets = [], []
        for k, line in enumerate(_lines(cat_file), start=1):
            fields = line.split()
            if len(fields) != 2:
                raise PointCloudFileError(
                    f"{cat_file}, line {k}: expected 'Category<TAB>synset', got {line!r}"
                )
            self.categories.append(fields[0])
            self.synsets.append(fields[1])
        split_file = self.root / "train_test_split" / f"shuffled_{split}_file_list.json"
        if not split_file.is_file():
            raise PointCloudFileError(f"{split_file}: missing (is the data set root right?)")
        try:
            entries = json.loads(split_file.read_text())
        except json.JSONDecodeError as exc:
            raise PointCloudFileError(f"{split_file}: not valid JSON ({exc})") from exc
        self.items = []
        for entry in entries:
            parts = str(entry).split("/")
            if len(parts) != 3 or parts[1] not in self.synsets:
                raise PointCloudFileError(
                    f"{split_file}: entry {entry!r} is not 'shape_data/<synset>/<token>'"
                )
            self.items.append((parts[1], parts[2]))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> Data:
        synset, token = self.items[k]
        table = _numeric_table(self.root / synset / f"{token}.txt", 7, None)[: self.num_points]
        data = Data(
            pos=torch.from_numpy(table[:, :3].copy()),
            normal=torch.from_numpy(table[:, 3:6].copy()),
            y=torch.tensor([self.synsets.index(synset)]),
            part=torch.from_numpy(table[:, 6].astype(np.int64)),
        )
        return self.transform(data) if self.transform is not None else data
