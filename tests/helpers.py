"""Shared test utilities: random cells, backend lists, procedural shapes moved rigidly, scans and boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from geo3d.data.shapes import make_shape
from geo3d.data.transforms import random_rotation
from geo3d.ops import backend_status

NATIVE_BACKENDS_HERE = [b for b in ("cpu",) if backend_status()[b][0]]


def random_cell(rng: np.random.Generator, scale: float = 6.0) -> np.ndarray:
    """A random, well-conditioned triclinic cell (rows are vectors)."""
    while True:
        cell = np.diag(rng.uniform(0.6, 1.4, 3) * scale) + rng.uniform(-0.35, 0.35, (3, 3)) * scale
        if abs(np.linalg.det(cell)) > 0.2 * scale**3:
            return cell


def min_height(cell: np.ndarray) -> float:
    """Shortest perpendicular height of the cell."""
    inv = np.linalg.inv(cell)
    return float(1.0 / np.linalg.norm(inv, axis=0).max())


def as_sets(edge_index: torch.Tensor, shifts: torch.Tensor) -> set[tuple[int, ...]]:
    return {
        (int(j), int(i), *map(int, s))
        for (j, i), s in zip(edge_index.T.tolist(), shifts.tolist(), strict=True)
    }


def procedural_shapes(n: int, points: int = 128) -> list:
    """One Shapes instance of each of the first ``n`` classes (``Data``), seed 0."""
    rng = np.random.default_rng(0)
    return [make_shape(label, points, rng) for label in range(n)]


def moved_batch(shapes: list, seed: int, rotate: bool = True) -> Batch:
    """``shapes`` each rotated (SO(3), or not), translated and with its points permuted, as a Batch."""
    return moved_batch_and_order(shapes, seed, rotate)[0]


def moved_batch_and_order(shapes: list, seed: int, rotate: bool = True) -> tuple[Batch, torch.Tensor]:
    """:func:`moved_batch` and, per moved point, the index of its original point in the unmoved batch."""
    g = torch.Generator().manual_seed(seed)
    out, order, offset = [], [], 0
    for s in shapes:
        rot = random_rotation("so3" if rotate else "none", g)
        perm = torch.randperm(len(s.pos), generator=g)
        t = s.clone()
        t.pos = (s.pos @ rot.T + torch.randn(3, generator=g))[perm]
        out.append(t)
        order.append(perm + offset)
        offset += len(s.pos)
    return Batch.from_data_list(out), torch.cat(order)


def write_ply(path: Path, pos: torch.Tensor) -> Path:
    """An ASCII PLY scan of ``pos [N, 3]`` (x, y, z only), as a user's own file would be."""
    lines = [f"{x:.5f} {y:.5f} {z:.5f}" for x, y, z in pos.tolist()]
    header = ["ply", "format ascii 1.0", f"element vertex {len(pos)}"]
    header += [f"property float {c}" for c in "xyz"] + ["end_header"]
    path.write_text("\n".join(header + lines) + "\n")
    return path


def fraction_found(scene, boxes: list[dict], iou_threshold: float = 0.25) -> float:
    """Share of a Rooms scene's objects matched by a ``geo3d detect`` box of their class above the IoU."""
    from geo3d.data.rooms import CLASS_NAMES
    from geo3d.metrics.detection import box3d_iou_matrix

    pred = torch.tensor([[*b["centre"], *b["size"], b["yaw"]] for b in boxes], dtype=torch.float64)
    label = torch.tensor([CLASS_NAMES.index(b["class"]) for b in boxes])
    iou = box3d_iou_matrix(scene.boxes.double(), pred)  # [M, K]
    same_class = scene.box_class[:, None] == label[None, :]
    return float(((iou > iou_threshold) & same_class).any(1).float().mean())
