"""kNN graph and farthest-point sampling: geo3d's CPU ops against plain-torch baselines (and torch_cluster).

kNN (k = 16, uniform random points in a cube, one graph): geo3d ``knn_graph``
against ``torch.cdist`` + ``topk`` in row chunks of 4096 (a full N x N distance
matrix does not fit at 100k points; the chunking is the fair baseline) and
torch_cluster's ``knn_graph`` where installed. FPS (ratio 0.25 below 20k points,
fixed 1000 samples above): geo3d ``fps`` against the textbook torch loop (one
vectorised distance update per sample) and torch_cluster's ``fps``. Peak memory
of geo3d's kNN is the rise of VmHWM in a fresh process.

Usage: python benchmarks/point_ops.py [--sizes 10000,100000] [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from timing import timed  # noqa: E402

from geo3d.ops.point_ops import fps, knn_graph  # noqa: E402

K = 16


def knn_cdist_topk(pos: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    rows = []
    for start in range(0, len(pos), chunk):
        d = torch.cdist(pos[start : start + chunk], pos)
        d[torch.arange(d.shape[0]), torch.arange(start, start + d.shape[0])] = float("inf")
        rows.append(d.topk(k, dim=1, largest=False).indices)
    idx = torch.cat(rows)
    return torch.stack([idx.reshape(-1), torch.arange(len(pos)).repeat_interleave(k)])


def fps_torch(pos: torch.Tensor, m: int) -> torch.Tensor:
    dist = torch.full((len(pos),), float("inf"), dtype=pos.dtype)
    out = torch.empty(m, dtype=torch.long)
    last = 0
    out[0] = 0
    for s in range(1, m):
        dist = torch.minimum(dist, ((pos - pos[last]) ** 2).sum(-1))
        last = int(torch.argmax(dist))
        out[s] = last
    return out


def peak_mib(n: int) -> float:
    """VmHWM rise of a fresh process running geo3d's kNN once on n points."""
    code = "\n".join(
        [
            f"import sys; sys.path.insert(0, {str(ROOT)!r})",
            "import torch",
            "from geo3d.ops.point_ops import knn_graph",
            "def kib(f):",
            "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(f))",
            f"pos = torch.rand({n}, 3, generator=torch.Generator().manual_seed(0)) * 10",
            "base = kib('VmRSS:')",
            f"knn_graph(pos, {K})",
            "print((kib('VmHWM:') - base) / 1024)",
        ]
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    try:
        import torch_cluster
    except ImportError:
        torch_cluster = None
    header = (
        f"Point ops, {datetime.date.today()}, {platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, torch_cluster {getattr(torch_cluster, '__version__', 'not installed')}"
    )
    print(header)
    rows = []
    for n in map(int, args.sizes.split(",")):
        pos = torch.rand(n, 3, generator=torch.Generator().manual_seed(0)) * 10
        ours = knn_graph(pos, K)
        base = knn_cdist_topk(pos, K)
        d_ours = ((pos[ours[0]] - pos[ours[1]]) ** 2).sum(-1).reshape(n, K)
        d_base = ((pos[base[0]] - pos[base[1]]) ** 2).sum(-1).reshape(n, K).sort(dim=1).values
        agree = torch.allclose(d_ours, d_base, rtol=1e-4, atol=1e-6)
        t_ours = timed(lambda pos=pos: knn_graph(pos, K), args.repeats)
        t_base = timed(lambda pos=pos: knn_cdist_topk(pos, K), max(1, args.repeats // 2))
        t_tc = (
            timed(lambda pos=pos: torch_cluster.knn_graph(pos, K), args.repeats)
            if torch_cluster
            else float("nan")
        )
        mem = peak_mib(n)
        rows.append(
            ("knn_graph k=16", n, t_ours, t_base, t_tc, f"{mem:.0f} MiB ({mem * 2**20 / (n * K):.0f} B/edge)")
        )
        print(
            f"knn n={n}: geo3d {t_ours * 1e3:.1f} ms, cdist+topk {t_base * 1e3:.1f} ms "
            f"({t_base / t_ours:.1f}x), torch_cluster {t_tc * 1e3:.1f} ms, same distances: {agree}, peak {mem:.0f} MiB"
        )
        m = int(0.25 * n) if n <= 20000 else 1000
        t_ours = timed(lambda pos=pos, m=m, n=n: fps(pos, ratio=m / n), args.repeats)
        t_base = timed(lambda pos=pos, m=m: fps_torch(pos, m), 1)
        t_tc = (
            timed(
                lambda pos=pos, m=m, n=n: torch_cluster.fps(pos, ratio=m / n, random_start=False),
                args.repeats,
            )
            if torch_cluster
            else float("nan")
        )
        rows.append((f"fps {m} samples", n, t_ours, t_base, t_tc, ""))
        print(
            f"fps n={n} m={m}: geo3d {t_ours * 1e3:.1f} ms, torch loop {t_base * 1e3:.1f} ms ({t_base / t_ours:.1f}x)"
        )
    if args.out:
        lines = [
            "",
            f"### {header}",
            "",
            "| op | N | geo3d (ms) | torch baseline (ms) | baseline / geo3d | torch_cluster (ms) | geo3d peak memory |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        lines += [
            f"| {r[0]} | {r[1]} | {r[2] * 1e3:.1f} | {r[3] * 1e3:.1f} | {r[3] / r[2]:.1f}x | {r[4] * 1e3:.1f} | {r[5]} |"
            for r in rows
        ]
        with args.out.open("a") as fh:
            fh.write("\n".join(lines) + "\n")
    print(json.dumps({"ok": True}))


if __name__ == "__main__":
    main()
