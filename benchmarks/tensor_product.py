"""Tensor product: geo3d's fused conv and plain TP against e3nn, side by side in one run.

Problems (the issue's three):
  (a) NequIP-like conv: 32x0e+32x1o+32x2e x SH 0e+1o+2e -> channel-wise (uvu) outputs;
  (b) MACE-like conv: 128x0e+128x1o x SH 0e+1o+2e+3o -> uvu outputs of 0e, 1o, 2e, 3o;
  (c) fully connected (uvw, shared weights) 32x0e+32x1o+32x2e x same -> same, one row per atom.
Graphs: geo3d's radius graph on a periodic box of water molecules at 1 g/cm^3 (a
3.1 Å lattice of randomly oriented molecules), cutoff 4.15 Å: ~30 neighbours per atom.

geo3d: ``ChannelWiseTensorProductConv`` (fused, no messages stored) and
``FullyConnectedTensorProduct``, backend ``cpu``. e3nn: ``o3.TensorProduct`` with the
same instructions on gathered sender features, then ``index_add_`` (its standard
use in NequIP/MACE), eager; ``--compile`` adds e3nn under ``torch.compile`` (forward and
forward+backward: torch.compile's AOT autograd has no double backward).
Both get the same inputs in the same dtype; outputs are compared once per case.

Modes: ``fwd``; ``fwd+bwd`` (gradients of every input of a sum of squares);
``fwd+bwd+dbl`` (the gradient of |d E / d x|^2, i.e. force training). Times are the
median of ``--repeats`` calls after a warm-up; every (case, implementation, mode)
runs in a fresh process, and its peak memory is the rise of the resident
high-water mark (VmHWM) over the resident size once inputs and graph are built.

Usage:
  python benchmarks/tensor_product.py                     # 1k and 5k atoms, float32
  python benchmarks/tensor_product.py --sizes 1000 --repeats 2 --quick
  python benchmarks/tensor_product.py --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import e3nn
import torch
from e3nn import o3

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from geo3d.nn import ChannelWiseTensorProductConv, FullyConnectedTensorProduct  # noqa: E402
from geo3d.ops import radius_graph  # noqa: E402
from geo3d.runtime import RETAIN_FREED_MEMORY_ENV  # noqa: E402

PROBLEMS = {
    "a": ("NequIP-like conv", "32x0e+32x1o+32x2e", "0e+1o+2e", "32x0e+32x1o+32x2e"),
    "b": ("MACE-like conv", "128x0e+128x1o", "0e+1o+2e+3o", "128x0e+128x1o+128x2e+128x3o"),
    "c": ("fully connected TP", "32x0e+32x1o+32x2e", "32x0e+32x1o+32x2e", "32x0e+32x1o+32x2e"),
}
MODES = ("fwd", "fwd+bwd", "fwd+bwd+dbl")
WATER_SPACING = 3.1  # Å per molecule at 1 g/cm^3
CUTOFF = 4.15


def e3nn_peer_tp(conv: ChannelWiseTensorProductConv) -> o3.TensorProduct:
    """e3nn's TensorProduct with ``conv``'s instructions and per-edge weights (the peer of the conv)."""
    return o3.TensorProduct(
        conv.irreps_in1,
        conv.irreps_in2,
        conv.irreps_out,
        [(i.i_in1, i.i_in2, i.i_out, i.mode, i.has_weight) for i in conv.instructions],
        shared_weights=False,
        internal_weights=False,
    )


def water_box(n_atoms: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [N, 3] and cell [3, 3] of a periodic box of randomly oriented water molecules."""
    g = torch.Generator().manual_seed(seed)
    n = max(1, round((n_atoms / 3) ** (1 / 3)))
    grid = torch.stack(torch.meshgrid(*[torch.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = (grid.double() + 0.5) * WATER_SPACING
    # O at the origin, H at 0.957 Å with a 104.5° angle, then a random rotation per molecule.
    half = math.radians(104.5) / 2
    mol = torch.tensor(
        [
            [0.0, 0.0, 0.0],
            [0.957 * math.sin(half), 0.957 * math.cos(half), 0.0],
            [-0.957 * math.sin(half), 0.957 * math.cos(half), 0.0],
        ],
        dtype=torch.float64,
    )
    q, _ = torch.linalg.qr(torch.randn(len(centres), 3, 3, generator=g, dtype=torch.float64))
    pos = (centres[:, None, :] + mol[None] @ q.transpose(1, 2)).reshape(-1, 3)
    return pos, torch.eye(3, dtype=torch.float64) * n * WATER_SPACING


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median seconds, peak MiB): the rise of VmHWM over VmRSS in this fresh process."""
    gc.collect()
    base = vm_kib("VmRSS")
    fn()  # warm-up, and the memory measurement
    peak = (vm_kib("VmHWM") - base) / 1024
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak


def run_one(problem: str, size: int, impl: str, mode: str, dtype: str, repeats: int) -> dict:
    """One measurement in this (fresh) process, so peak memory is not hidden by the allocator's reuse."""
    impls, base_inputs, graph = build(problem, size, getattr(torch, dtype), impl == "e3nn+compile")
    inputs = [t.clone().requires_grad_() for t in base_inputs]
    t, peak = measure(runner(impls[impl], inputs, mode), repeats)
    return {"time": t, "peak": peak, "graph": graph}


def spawn(problem: str, size: int, impl: str, mode: str, dtype: str, repeats: int) -> dict | None:
    cmd = [sys.executable, __file__, "--one", f"{problem},{size},{impl},{mode}", "--dtype", dtype]
    cmd += ["--repeats", str(repeats)]
    # Every subprocess, e3nn's included, keeps freed memory for reuse (geo3d.runtime): otherwise page
    # faults of fresh intermediates are up to half of each side's time.
    env = {**os.environ, **RETAIN_FREED_MEMORY_ENV}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"  {impl} {mode}: failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def runner(model: Callable, inputs: list[torch.Tensor], mode: str) -> Callable[[], object]:
    """A closure running ``mode`` on ``model(*inputs)``; inputs are leaves that need grad."""

    def fwd():
        with torch.no_grad():
            return model(*inputs)

    def fwd_bwd():
        out = model(*inputs)
        return torch.autograd.grad(out.square().sum(), inputs)

    def fwd_bwd_dbl():
        out = model(*inputs)
        g = torch.autograd.grad(out.square().sum(), inputs[0], create_graph=True)[0]
        return torch.autograd.grad(g.square().sum(), inputs)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd, "fwd+bwd+dbl": fwd_bwd_dbl}[mode]


def build(problem: str, n_atoms: int, dtype: torch.dtype, compile_e3nn: bool):
    """(implementations {name: callable}, inputs, description of the graph)."""
    _, irreps1, irreps2, irreps_out = PROBLEMS[problem]
    pos, cell = water_box(n_atoms)
    n = len(pos)
    g = torch.Generator().manual_seed(1)
    if problem == "c":
        ours = FullyConnectedTensorProduct(irreps1, irreps2, irreps_out, backend="cpu").to(dtype)
        theirs = o3.FullyConnectedTensorProduct(irreps1, irreps2, irreps_out).to(dtype)
        theirs.weight.data.copy_(ours.weight.data)
        x1 = torch.randn(n, ours.dim_in1, generator=g).to(dtype)
        x2 = torch.randn(n, ours.dim_in2, generator=g).to(dtype)
        inputs = [x1, x2]
        impls = {"geo3d": ours, "e3nn": theirs}
        if compile_e3nn:
            impls["e3nn+compile"] = torch.compile(theirs, fullgraph=True)
        return impls, inputs, f"{n} rows"
    edge_index, shifts = radius_graph(pos, CUTOFF, cell=cell, pbc=torch.ones(3, dtype=torch.bool))
    vec = pos[edge_index[0]] - pos[edge_index[1]] + shifts.to(pos.dtype) @ cell
    conv = ChannelWiseTensorProductConv(irreps1, irreps2, irreps_out, backend="cpu").to(dtype)
    sh = o3.spherical_harmonics(conv.irreps_in2, vec, normalize=True).to(dtype)
    x = torch.randn(n, conv.dim_in1, generator=g).to(dtype)
    w = torch.randn(edge_index.shape[1], conv.weight_numel, generator=g).to(dtype)
    tp = e3nn_peer_tp(conv).to(dtype)
    src, dst = edge_index
    dim_out = tp.irreps_out.dim  # an int: dynamo cannot guard on e3nn's Irreps (its __len__ raises)

    def e3nn_conv(x, sh, w, tp=tp):
        return torch.zeros(n, dim_out, dtype=x.dtype).index_add_(0, dst, tp(x[src], sh, w))

    impls = {"geo3d": lambda x, sh, w: conv(x, sh, w, edge_index), "e3nn": e3nn_conv}
    if compile_e3nn:
        impls["e3nn+compile"] = torch.compile(e3nn_conv, fullgraph=True)
    degree = edge_index.shape[1] / n
    return impls, [x, sh, w], f"{n} atoms, {edge_index.shape[1]} edges ({degree:.1f}/atom)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="abc")
    ap.add_argument("--sizes", default="1000,5000", help="atoms, comma-separated")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also e3nn under torch.compile")
    ap.add_argument("--out", type=Path, help="append the markdown table to this file")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: problem,size,impl,mode
    args = ap.parse_args()
    if args.one:
        problem, size, impl, mode = args.one.split(",")
        print(json.dumps(run_one(problem, int(size), impl, mode, args.dtype, args.repeats)))
        return
    dtype = getattr(torch, args.dtype)
    rows = []
    header = (
        f"Tensor product, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, e3nn {e3nn.__version__}, "
        f"{args.dtype}"
    )
    print(header, flush=True)
    for problem in args.problems:
        for size in map(int, args.sizes.split(",")):
            impls, base_inputs, graph = build(problem, size, dtype, False)
            label = f"({problem}) {PROBLEMS[problem][0]}, {graph}"
            check = {name: fn(*base_inputs) for name, fn in impls.items()}
            err = ((check["geo3d"] - check["e3nn"]).abs().max() / check["e3nn"].abs().max()).item()
            print(f"{label}: max rel. difference geo3d vs e3nn {err:.1e}", flush=True)
            del check, impls, base_inputs
            names = ["geo3d", "e3nn"] + (["e3nn+compile"] if args.compile else [])
            for mode in args.modes.split(","):
                result = {}
                for name in names:
                    if name == "e3nn+compile" and mode == "fwd+bwd+dbl":
                        print(
                            f"  {mode:12s} {name:13s} n/a: torch.compile has no double backward", flush=True
                        )
                        continue
                    r = spawn(problem, size, name, mode, args.dtype, args.repeats)
                    if r is not None:
                        result[name] = (r["time"], r["peak"])
                ours = result.get("geo3d")
                for name, (t, mem) in result.items():
                    ratio = "" if name == "geo3d" or ours is None else f"{t / ours[0]:.1f}x"
                    mem_ratio = "" if name == "geo3d" or ours is None else f"{ours[1] / max(mem, 1e-3):.3f}"
                    rows.append((label, mode, name, t, mem, ratio, mem_ratio))
                    print(
                        f"  {mode:12s} {name:13s} {t * 1e3:9.1f} ms  peak {mem:8.1f} MiB  "
                        f"{'speed-up of geo3d ' + ratio if ratio else ''}"
                        f"{'  memory geo3d/peer ' + mem_ratio if mem_ratio else ''}",
                        flush=True,
                    )
    if args.out:
        lines = [
            "",
            f"### {header}",
            "",
            "| case | mode | impl | time (ms) | peak (MiB) | peer time / geo3d | geo3d mem / peer mem |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r[0]} | {r[1]} | {r[2]} | {r[3] * 1e3:.1f} | {r[4]:.0f} | {r[5]} | {r[6]} |" for r in rows
        ]
        with args.out.open("a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("GEO3D_TP_BACKEND", "cpu")
    main()
