"""CUDA backend of the radius graph.

Without a GPU (CI): every op's ``cuda_ext/<op>/*.cu`` must compile with nvcc, and the
radius-graph kernels must contain no fused multiply-add (their exactness
against the CPU backend rests on that). With a GPU and the CUDA build of
``geo3d._C`` (``-m cuda``): the ``cuda`` backend must return exactly the ``cpu``
backend's edges, in the same order with the same shifts, and the reference's
edge set.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import check_radius_graph_against_cpu, random_pbc_batch

from geo3d.ops import backend_status, radius_graph

ROOT = Path(__file__).resolve().parents[1]
CUDA_EXT = ROOT / "cuda_ext"
# The kernels of every op folder (cudasim/ holds the simulator's own test kernels).
CU_SOURCES = sorted(p for p in CUDA_EXT.glob("*/*.cu") if p.parent.name != "cudasim")
NVCC = shutil.which("nvcc")
# One architecture keeps a compile to seconds; every nvcc since CUDA 11.0 knows sm_80.
NVCC_FLAGS = [
    "-std=c++17",
    "-O3",
    "--use_fast_math",
    "-arch=sm_80",
    "-I",
    str(CUDA_EXT),
]

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
CUDA_OK, CUDA_WHY = backend_status()["cuda"]
needs_cuda = pytest.mark.skipif(not CUDA_OK, reason=f"cuda backend not available: {CUDA_WHY}")


def _nvcc(args: list[str]) -> None:
    cmd = [NVCC, *NVCC_FLAGS, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(cmd)}\nfailed with:\n{result.stderr}"


def test_there_are_cuda_sources():
    assert CU_SOURCES, f"no .cu files in {CUDA_EXT}"


def test_native_sources_have_distinct_base_names():
    # setuptools names objects by path without the suffix: x.cpp and x.cu in one folder
    # would both become x.o, and one of them would silently be left out of the CUDA build;
    # the simulator's build wraps each .cu file in a C++ file named by its base name.
    stems = [p.stem for p in CUDA_EXT.rglob("*") if p.suffix in (".cpp", ".cu")]
    assert len(stems) == len(set(stems)), f"clashing object names in {CUDA_EXT}: {sorted(stems)}"


@needs_nvcc
@pytest.mark.parametrize("source", CU_SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles(source: Path, tmp_path: Path):
    _nvcc(["-c", str(source), "-o", str(tmp_path / f"{source.stem}.o")])


@needs_nvcc
def test_radius_graph_kernels_do_not_fuse(tmp_path: Path):
    # nvcc contracts a * b + c into an FMA unless told not to; one fused
    # rounding can move a point to another bin or flip a test at the cutoff,
    # and the CUDA edges would stop matching the CPU's. The kernels use mul_rn.
    ptx = tmp_path / "radius_graph_cuda_kernels.ptx"
    _nvcc(["-ptx", str(CUDA_EXT / "radius_graph" / "radius_graph_cuda_kernels.cu"), "-o", str(ptx)])
    fused = sorted(set(re.findall(r"\bfma\.\S+", ptx.read_text())))
    assert not fused, f"FMA instructions in the radius-graph kernels: {fused}"


# ---------------------------------------------------------------------------
# On a GPU: cuda == cpu exactly, and == reference as a set.


def _check(pos, r, batch=None, cell=None, pbc=None, loop=False, num_graphs=None):
    kwargs = dict(batch=batch, cell=cell, pbc=pbc, loop=loop, num_graphs=num_graphs)
    return check_radius_graph_against_cpu(pos, r, "cuda", "cuda", **kwargs)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("r", [0.7, 2.5, 6.0])  # 6.0 is larger than every cell: many images
@pytest.mark.parametrize("loop", [False, True])
def test_cuda_matches_cpu_triclinic_mixed_pbc(dtype, r, loop):
    sizes = [0, 13, 1, 0, 24, 7, 0]  # empty graphs first, in the middle and last
    pos, batch, cell, pbc = random_pbc_batch(seed=17, sizes=sizes, dtype=dtype)
    ei = _check(pos, r, batch, cell, pbc, loop=loop, num_graphs=len(sizes))
    assert ei.shape[1] > 0


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(4))
def test_cuda_matches_cpu_random_batches(dtype, seed):
    sizes = torch.randint(0, 30, (6,), generator=torch.Generator().manual_seed(seed)).tolist()
    pos, batch, cell, pbc = random_pbc_batch(seed=100 + seed, sizes=sizes, dtype=dtype)
    _check(pos, 1.9, batch, cell, pbc, num_graphs=len(sizes))


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu_lattice_on_cell_faces(dtype):
    # Points exactly on the faces of the cell (fractions 0 and 1) and just
    # below 0: the wrap's rounding corner, and many exact ties in bin order.
    cell = torch.tensor([[4.0, 0.0, 0.0], [1.0, 4.0, 0.0], [0.5, 0.5, 4.0]], dtype=torch.float64)
    ticks = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, -1e-17, -1e-9], dtype=torch.float64)
    frac = torch.cartesian_prod(ticks, ticks, ticks)
    pos = (frac @ cell).to(dtype)
    _check(pos, 1.3, cell=cell, pbc=[True, True, False])


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu_no_cell(dtype):
    gen = torch.Generator().manual_seed(3)
    sizes = [40, 0, 25, 60]
    pos = (6.0 * torch.rand(sum(sizes), 3, generator=gen, dtype=torch.float64)).to(dtype)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    _check(pos, 1.6, batch, num_graphs=len(sizes))


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu_large_on_side_stream(dtype):
    # Many blocks per kernel, and the op must run on the caller's current stream.
    gen = torch.Generator().manual_seed(5)
    n = 20_000
    cell = torch.tensor([[30.0, 0.0, 0.0], [4.0, 28.0, 0.0], [-3.0, 2.0, 31.0]], dtype=torch.float64)
    pos = (torch.rand(n, 3, generator=gen, dtype=torch.float64) @ cell).to(dtype)
    ei_cpu, sh_cpu = radius_graph(pos, 3.0, cell=cell, backend="cpu")
    stream = torch.cuda.Stream()
    pos_cuda = pos.cuda()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ei, sh = radius_graph(pos_cuda, 3.0, cell=cell, backend="cuda")
    stream.synchronize()
    assert torch.equal(ei.cpu(), ei_cpu) and torch.equal(sh.cpu(), sh_cpu)
