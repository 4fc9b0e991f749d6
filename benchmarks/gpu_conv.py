"""Fused TP convolution on a GPU: geo3d's CUDA kernels against e3nn (and cuEquivariance /
OpenEquivariance where importable), same inputs, same run. Called by benchmarks/gpu_check.sh.

Problems (a) NequIP-like and (b) MACE-like of benchmarks/tensor_product.py, on its periodic
water box (~30 neighbours per atom). geo3d: ``ChannelWiseTensorProductConv`` on the
``cuda`` backend; e3nn: ``o3.TensorProduct`` on gathered sender features then
``index_add_``. Times: CUDA events around each call, median of ``--repeats`` after two
warm-ups; modes ``fwd`` and ``fwd+bwd`` (gradients of x, sh and w of a sum of squares).
Outputs are compared once (relative max error against e3nn).

    python benchmarks/gpu_conv.py --sizes 5000,20000 --out $OUT/gpu_results.md
    python benchmarks/gpu_conv.py --device cpu --sizes 300 --backend cudasim   # dry run, no GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from e3nn import o3

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from tensor_product import CUTOFF, PROBLEMS, e3nn_peer_tp, water_box  # noqa: E402

from geo3d.nn import ChannelWiseTensorProductConv  # noqa: E402
from geo3d.ops import radius_graph  # noqa: E402


def _timer(device: torch.device):
    if device.type == "cuda":

        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3

        return run

    def run_cpu(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    return run_cpu


def _median_time(fn, device, repeats: int) -> float:
    timer = _timer(device)
    for _ in range(2):
        timer(fn)
    return statistics.median(timer(fn) for _ in range(repeats))


def _peers(conv: ChannelWiseTensorProductConv, device, dtype):
    """(name, callable(x, sh, w, edge_index)) for each peer that imports here."""
    tp = e3nn_peer_tp(conv).to(device=device, dtype=dtype)

    def e3nn_conv(x, sh, w, ei):
        return x.new_zeros(x.shape[0], conv.irreps_out.dim).index_add_(0, ei[1], tp(x[ei[0]], sh, w))

    peers = [("e3nn", e3nn_conv)]
    try:  # cuEquivariance's uniform 1d segmented TP: the same channel-wise conv
        import cuequivariance as cue
        import cuequivariance_torch as cuet

        desc = cue.descriptors.channelwise_tensor_product(
            cue.Irreps("O3", str(conv.irreps_in1)),
            cue.Irreps("O3", str(conv.irreps_in2)),
            cue.Irreps("O3", str(conv.irreps_out)),
        )
        cue_tp = cuet.EquivariantTensorProduct(desc, layout=cue.ir_mul, device=device, math_dtype=dtype)
        peers.append(
            ("cuequivariance (no scatter, own weight layout)", lambda x, sh, w, ei: cue_tp(w, x[ei[0]], sh))
        )
    except Exception as exc:
        print(f"cuequivariance: not run ({type(exc).__name__}: {exc})")
    return peers


def time_case(title: str, impls, inputs, device, repeats: int) -> list[tuple]:
    """Rows (problem, atoms, edges, implementation, fwd s, fwd+bwd s, difference to geo3d's output)."""
    x, sh, w, ei = inputs
    rows, ref = [], None
    for impl, fn in impls:
        out = fn(x, sh, w, ei)
        if ref is None or out.shape != ref.shape or impl != "e3nn":
            err = "" if ref is None else "n/a (other weight layout)"
        else:
            err = f"{((out - ref).abs().max() / ref.abs().max()).item():.1e}"
        ref = out if ref is None else ref
        leaves = [t.detach().requires_grad_() for t in (x, sh, w)]

        def fwd(fn=fn):
            with torch.no_grad():
                fn(x, sh, w, ei)

        def fwd_bwd(fn=fn, leaves=leaves):
            y = fn(leaves[0], leaves[1], leaves[2], ei)
            torch.autograd.grad((y * y).sum(), leaves)

        t_f = _median_time(fwd, device, repeats)
        t_b = _median_time(fwd_bwd, device, repeats)
        rows.append((title, x.shape[0], ei.shape[1], impl, t_f, t_b, err))
        print(
            f"{title} N={x.shape[0]} E={ei.shape[1]} {impl}: fwd {t_f * 1e3:.2f} ms, "
            f"fwd+bwd {t_b * 1e3:.2f} ms {err}",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5000,20000")
    ap.add_argument("--problems", default="ab")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default="cuda", help="geo3d backend (cudasim for a dry run on the CPU)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    rows = []
    for p in args.problems:
        title, i1, i2, io = PROBLEMS[p]
        for n in map(int, args.sizes.split(",")):
            pos, cell = water_box(n)
            ei, shifts = radius_graph(pos, CUTOFF, cell=cell, pbc=[True] * 3)
            vec = pos[ei[0]] - pos[ei[1]] + shifts.double() @ cell
            conv = ChannelWiseTensorProductConv(i1, i2, io, backend=args.backend).to(
                device=device, dtype=dtype
            )
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(len(pos), conv.irreps_in1.dim, generator=gen).to(device, dtype)
            sh = o3.spherical_harmonics(conv.irreps_in2, vec, normalize=True).to(device, dtype)
            w = torch.randn(ei.shape[1], conv.weight_numel, generator=gen).to(device, dtype)
            ei = ei.to(device)
            impls = [("geo3d", conv), *_peers(conv, device, dtype)]
            rows += time_case(title, impls, (x, sh, w, ei), device, args.repeats)
    lines = [
        f"## Fused TP conv on {name} (`python benchmarks/gpu_conv.py`, {args.dtype})",
        "",
        "| problem | atoms | edges | implementation | fwd ms | fwd+bwd ms | impl / geo3d fwd | impl / geo3d fwd+bwd | max rel. diff vs geo3d |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = {}
    for title, n, e, impl, t_f, t_b, err in rows:
        if impl == "geo3d":
            base[(title, n)] = (t_f, t_b)
        bf, bb = base[(title, n)]
        lines.append(
            f"| {title} | {n} | {e} | {impl} | {t_f * 1e3:.2f} | {t_b * 1e3:.2f} | {t_f / bf:.2f}x | "
            f"{t_b / bb:.2f}x | {err} |"
        )
    table = "\n".join(lines) + "\n\n(impl time / geo3d time: above 1 means geo3d is faster.)\n"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as fh:
            fh.write(table + "\n")


if __name__ == "__main__":
    main()
