"""EQGAT's vector messages: plain torch (as geo3d.nn.eqgat does it) against geo3d's fused TP conv.

The message of an EQGAT layer is ``m_i = mean_j (r_ij c0_ij + c1_ij * (W_v v)_j)``
(``r_ij`` the scaled edge vector, ``c0, c1 [E, V]`` per-edge coefficients), i.e. a
channel-wise tensor product of node features ``1x0e + Vx1o`` with edge features
``1x0e + 1x1o`` into ``Vx1o``, summed over neighbours. This script checks the
layer's fused form (``VectorMessages``) against the plain-torch one on QM9-sized
fully connected batches and times forward and forward+backward.

Usage: python benchmarks/eqgat_vector_messages.py [--molecules 64] [--atoms 18] [--v-dim 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from timing import timed  # noqa: E402

from geo3d.graph.fully_connected import fully_connected_edges  # noqa: E402
from geo3d.nn.eqgat import VectorMessages  # noqa: E402
from geo3d.ops.scatter import scatter  # noqa: E402


def plain(r_hat, c0, c1, wv, edge_index, n):
    """[N, 3, V]: the layer's own code path (messages materialised, then a scatter mean)."""
    j, i = edge_index
    msg = r_hat.unsqueeze(-1) * c0.unsqueeze(1) + c1.unsqueeze(1) * wv[j]
    return scatter(msg, i, 0, n, "mean")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", type=int, default=64)
    ap.add_argument("--atoms", type=int, default=18)
    ap.add_argument("--v-dim", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    b, a, v_dim = args.molecules, args.atoms, args.v_dim
    n = b * a
    ptr = torch.arange(0, n + 1, a)
    edge_index, _ = fully_connected_edges(ptr)
    e = edge_index.shape[1]
    g = torch.Generator().manual_seed(0)
    r_hat = torch.randn(e, 3, generator=g)
    c0, c1 = torch.randn(e, v_dim, generator=g), torch.randn(e, v_dim, generator=g)
    wv = torch.randn(n, 3, v_dim, generator=g)
    fused = VectorMessages(v_dim, first=False)
    ref = plain(r_hat, c0, c1, wv, edge_index, n)
    got = fused(r_hat, torch.cat([c0, c1], dim=1), wv, edge_index, n)
    err = ((got - ref).abs().max() / ref.abs().max()).item()
    rows = []
    for name, fn in (
        ("plain torch", lambda *t: plain(*t, edge_index, n)),
        (
            "fused TP conv (geo3d.nn.eqgat.VectorMessages)",
            lambda r, a, b, u: fused(r, torch.cat([a, b], 1), u, edge_index, n),
        ),
    ):
        inputs = [t.clone().requires_grad_() for t in (r_hat, c0, c1, wv)]
        with torch.no_grad():
            t_fwd = timed(lambda fn=fn, inputs=inputs: fn(*inputs), args.repeats)
        t_bwd = timed(
            lambda fn=fn, inputs=inputs: torch.autograd.grad(fn(*inputs).square().sum(), inputs), args.repeats
        )
        rows.append((name, t_fwd, t_bwd))
    header = (
        f"EQGAT vector messages, {datetime.date.today()}, {b} molecules x {a} atoms fully connected "
        f"({e} edges), V={v_dim}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"max rel. difference {err:.1e}"
    )
    lines = [header, "", "| implementation | forward (ms) | forward+backward (ms) |", "|---|---:|---:|"]
    lines += [f"| {name} | {f * 1e3:.2f} | {fb * 1e3:.2f} |" for name, f, fb in rows]
    print("\n".join(lines))
    if args.out:
        with args.out.open("a") as fh:
            fh.write("\n### " + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
