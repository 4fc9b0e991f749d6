"""Shared test utilities: random cells, backend lists, procedural shapes moved rigidly, scans and boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geo3d.ops import backend_status

NATIVE_BACKENDS_HERE = [b for b in ("cpu",) if backend_status()[b][0]]
# The native backends plus the CUDA kernels on the host simulator (marked `cudasim`): tests
# parametrised over these run the .cu kernels in every default run, at the cpu's tolerances.
KERNEL_BACKEND_NAMES = [*NATIVE_BACKENDS_HERE, *(["cudasim"] if backend_status()["cudasim"][0] else [])]
KERNEL_BACKENDS_HERE = [
    *NATIVE_BACKENDS_HERE,
    *([pytest.param("cudasim", marks=pytest.mark.cudasim)] if backend_status()["cudasim"][0] else []),
]


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
    from geo3d.data.shapes import make_shape  # here: the kernel tests import helpers without RDKit

    return [make_shape(label, points, rng) for label in range(n)]


def moved_batch(shapes: list, seed: int, rotate: bool = True):
    """``shapes`` each rotated (SO(3), or not), translated and with its points permuted, as a Batch."""
    return moved_batch_and_order(shapes, seed, rotate)[0]


def moved_batch_and_order(shapes: list, seed: int, rotate: bool = True):
    """:func:`moved_batch` and, per moved point, the index of its original point in the unmoved batch."""
    from torch_geometric.data import Batch

    from geo3d.data.transforms import random_rotation

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
    from geo3d.data.room_layout import CLASS_NAMES
    from geo3d.ops.boxes import box3d_iou_matrix

    pred = torch.tensor([[*b["centre"], *b["size"], b["yaw"]] for b in boxes], dtype=torch.float64)
    label = torch.tensor([CLASS_NAMES.index(b["class"]) for b in boxes])
    iou = box3d_iou_matrix(scene.boxes.double(), pred)  # [M, K]
    same_class = scene.box_class[:, None] == label[None, :]
    return float(((iou > iou_threshold) & same_class).any(1).float().mean())


def random_tp_plan(seed: int, max_mul: int = 40, lmax: int = 3):
    """Random irreps (repeats allowed), all allowed paths, uvu where multiplicities allow, some unweighted.

    Multiplicities 1, 3, 33 and ``max_mul`` put channel loops below, at and above a warp's 32 lanes.
    """
    import random

    from e3nn import o3

    from geo3d.o3 import TPPlan

    rng = random.Random(seed)
    muls = [1, 3, 33, max_mul]

    def ir():
        return rng.randint(0, lmax), rng.choice((1, -1))

    while True:
        i1 = o3.Irreps([(rng.choice(muls), ir()) for _ in range(4)])
        i2 = o3.Irreps([(rng.choice([1, 1, 2]), ir()) for _ in range(3)])
        out = o3.Irreps([(rng.choice(muls), ir()) for _ in range(5)])
        ins = []
        for a, (m1, r1) in enumerate(i1):
            for b, (_, r2) in enumerate(i2):
                for c, (mo, ro) in enumerate(out):
                    if ro in r1 * r2:
                        mode = "uvu" if m1 == mo and rng.random() < 0.7 else "uvw"
                        ins.append((a, b, c, mode, mode == "uvw" or rng.random() < 0.8, rng.uniform(0.5, 2)))
        if ins:
            return TPPlan(i1, i2, out, ins)


def batch_of(sizes: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long))


def point_clouds(dtype: torch.dtype):
    """(name, pos, sizes): batches with empty graphs, ties, near-ties and extreme scales."""
    g = torch.Generator().manual_seed(11)
    sizes = [0, 300, 1, 2, 0, 37, 520, 9]  # > one 256-point tile and > one 128-query block
    yield "uniform batch", torch.rand(sum(sizes), 3, generator=g, dtype=torch.float64).to(dtype), sizes
    lattice = torch.stack(torch.meshgrid(*[torch.arange(5.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    yield "lattice (ties)", lattice.to(dtype), [125]
    yield "duplicates", torch.ones(40, 3, dtype=dtype), [17, 23]
    # Lattice moved by a few float ulps: float distances tie where double ones do not.
    ulps = torch.randint(-3, 4, lattice.shape, generator=g).to(torch.float32)
    near = (lattice.float() + 1.0) * (1 + ulps * 2.0**-23)
    yield "near ties", near.to(dtype), [125]
    # A centre and a thin spherical shell: its neighbours' distances agree to ~1e-7, where
    # float rounding reorders them, so the prefilter's margin is what keeps the right ones.
    shell = torch.randn(400, 3, generator=g, dtype=torch.float64)
    shell = shell / shell.norm(dim=1, keepdim=True) * (1 + 1e-7 * torch.rand(400, 1, generator=g))
    centre = torch.tensor([[0.3, 0.7, -0.2]], dtype=torch.float64)
    yield "shell", torch.cat([centre, centre + shell]).to(dtype), [401]
    for scale in (1e-25, 1e-20, 1e18, 1e19):  # float squares underflow / overflow
        yield (
            f"scale {scale:g}",
            (torch.randn(150, 3, generator=g, dtype=torch.float64) * scale).to(dtype),
            [150],
        )
    yield "flat", torch.cat([torch.rand(200, 2, generator=g), torch.zeros(200, 1)], 1).to(dtype), [200]


def random_pbc_batch(seed: int, sizes: list[int], dtype: torch.dtype):
    """Triclinic cells with random per-axis pbc; some points outside their cell."""
    gen = torch.Generator().manual_seed(seed)
    num = len(sizes)
    lengths = 2.0 + 3.0 * torch.rand(num, 3, generator=gen, dtype=torch.float64)
    cell = torch.diag_embed(lengths) + 0.8 * (torch.rand(num, 3, 3, generator=gen, dtype=torch.float64) - 0.5)
    pbc = torch.rand(num, 3, generator=gen) < 0.5
    batch = torch.repeat_interleave(torch.arange(num), torch.tensor(sizes))
    frac = -0.3 + 1.6 * torch.rand(len(batch), 3, generator=gen, dtype=torch.float64)
    pos = torch.einsum("nk,nkc->nc", frac, cell[batch]).to(dtype)
    return pos, batch, cell, pbc


def check_radius_graph_against_cpu(pos, r, backend: str, device: str = "cpu", **kwargs) -> torch.Tensor:
    """``backend`` on ``device`` returns the cpu op's edges exactly (content, order, shifts), and the
    reference's as a set; returns its edge_index (on the CPU)."""
    from geo3d.ops import canonical_order, radius_graph

    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    ei, sh = radius_graph(pos.to(device), r, backend=backend, **moved)
    assert ei.device.type == device and sh.device.type == device
    assert ei.dtype == torch.long and sh.dtype == torch.long
    ei, sh = ei.cpu(), sh.cpu()
    ei_cpu, sh_cpu = radius_graph(pos, r, backend="cpu", **kwargs)
    assert ei.shape == ei_cpu.shape, f"{backend} found {ei.shape[1]} edges, cpu {ei_cpu.shape[1]}"
    assert torch.equal(ei, ei_cpu), f"{backend} and cpu edge lists differ (content or order)"
    assert torch.equal(sh, sh_cpu), f"{backend} and cpu shifts differ"
    ei_ref, sh_ref = radius_graph(pos, r, backend="reference", **kwargs)
    ei_can, sh_can = canonical_order(ei, sh)
    assert torch.equal(ei_can, ei_ref) and torch.equal(sh_can, sh_ref), (
        f"{backend} differs from the reference"
    )
    return ei
