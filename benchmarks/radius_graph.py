"""Radius graph: geo3d's CPU backend against vesin, torch_cluster and ASE, in one run.

Cases:
  (a) ``cube``: uniform random points in a cube (unit density), 1k to 1M points,
      non-periodic, cutoff chosen for ~30 neighbours per point;
  (b) ``Cu``: fcc copper supercells (a = 3.61 Å), ~500 to ~100k atoms, 5 Å cutoff,
      periodic in all three directions.

Every library returns the full list (both directions of every pair) with
periodic shifts: geo3d ``radius_graph(..., backend="cpu")``, vesin
``NeighborList(cutoff=, full_list=True).compute(..., quantities="ijS")``,
torch_cluster ``radius_graph`` (CPU; it has no periodic boundaries, so cube
only, with ``max_num_neighbors=N`` so that nothing is truncated) and ASE
``neighbor_list("ijS", ...)``. Times are the median of a few calls after one
warm-up; the edge counts of geo3d and vesin (and of the others) are checked to
agree once per case. A peer is skipped where extrapolating its time from the
previous size says more than ``--slow-limit`` seconds per call.

Also measured: the peak memory of a fresh process running geo3d (and vesin)
once on the largest cube (``VmHWM``), the scaling ratio time(100k)/time(10k),
and the cost of just allocating and writing geo3d's output tensors (a floor no
neighbour list can go under; mostly page faults on fresh memory).

Usage:
  python benchmarks/radius_graph.py                      # full run (a few minutes)
  python benchmarks/radius_graph.py --quick              # small sizes, a smoke run
  python benchmarks/radius_graph.py --out benchmarks/RESULTS.md --png benchmarks/radius_graph.png
  python benchmarks/radius_graph.py --threads 1          # every library on one thread
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from report import write_section  # noqa: E402

from geo3d.ops import radius_graph  # noqa: E402

NEIGHBOURS = 30  # target mean neighbour count in the cube case
CU_A = 3.61
CU_CUTOFF = 5.0
PEERS = ("geo3d", "vesin", "torch_cluster", "ase")

try:
    import vesin
except ImportError:  # a benchmark dependency (pip install geo3d[bench])
    vesin = None
try:
    import torch_cluster
except (ImportError, OSError):
    torch_cluster = None
try:
    import ase
    from ase import Atoms
    from ase.build import bulk
    from ase.neighborlist import neighbor_list as ase_neighbor_list
except ImportError:
    ase = None


# ----------------------------------------------------------------------------- systems


@dataclass
class System:
    kind: str  # "cube" or "Cu"
    pos: np.ndarray  # [N, 3] float64
    cell: np.ndarray  # [3, 3]; zeros when non-periodic
    periodic: bool
    cutoff: float

    @property
    def n(self) -> int:
        return self.pos.shape[0]


def cube_cutoff() -> float:
    """Cutoff with ~NEIGHBOURS points in its sphere at unit density."""
    return (3.0 * NEIGHBOURS / (4.0 * np.pi)) ** (1.0 / 3.0)


def make_cube(n: int, seed: int = 0) -> System:
    side = n ** (1.0 / 3.0)  # unit density
    pos = np.random.default_rng(seed).random((n, 3)) * side
    return System("cube", pos, np.zeros((3, 3)), False, cube_cutoff())


def make_cu(reps: int) -> System:
    atoms = bulk("Cu", "fcc", a=CU_A, cubic=True).repeat((reps, reps, reps))
    return System("Cu", np.ascontiguousarray(atoms.positions), np.array(atoms.cell.array), True, CU_CUTOFF)


# ----------------------------------------------------------------------------- runners


def run_geo3d(s: System) -> int:
    pos = torch.from_numpy(s.pos)
    if s.periodic:
        ei, _ = radius_graph(pos, s.cutoff, cell=torch.from_numpy(s.cell), pbc=True, backend="cpu")
    else:
        ei, _ = radius_graph(pos, s.cutoff, backend="cpu")
    return ei.shape[1]


def run_vesin(s: System, nl: Any) -> int:
    i, _j, _shifts = nl.compute(s.pos, s.cell, s.periodic, quantities="ijS")
    return len(i)


def run_torch_cluster(s: System, x: torch.Tensor, threads: int) -> int:
    # max_num_neighbors = N: no centre can have more, so nothing is truncated.
    ei = torch_cluster.radius_graph(
        x, r=s.cutoff, loop=False, max_num_neighbors=s.n, flow="source_to_target", num_workers=threads
    )
    return ei.shape[1]


def ase_atoms(s: System) -> Any:
    """ASE bins in the cell even without PBC, and a zero cell makes a single bin (O(N^2)):
    the open cube gets its bounding box as the cell, as ASE users do."""
    if s.periodic:
        return Atoms("Cu" * s.n, positions=s.pos, cell=s.cell, pbc=True)
    side = float(s.pos.max()) * (1 + 1e-9)
    return Atoms("H" * s.n, positions=s.pos, cell=np.eye(3) * side, pbc=False)


def run_ase(s: System, atoms: Any) -> int:
    i, _j, _shifts = ase_neighbor_list("ijS", atoms, s.cutoff)
    return len(i)


def timed(fn, repeats: int, budget: float) -> tuple[float, int, int]:
    """(median seconds, result of the warm-up, calls timed): one warm-up, then up to
    ``repeats`` timed calls (at least 15 when a call takes under 0.1 s), fewer where they
    would take more than ``budget`` seconds."""
    t0 = time.perf_counter()
    result = fn()
    warm = time.perf_counter() - t0
    if warm < 0.1:  # fast calls: more of them, for a median that is steadier on a busy machine
        repeats = max(repeats, 15)
    reps = max(1, min(repeats, int(budget / max(warm, 1e-9))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result, reps


@dataclass
class Row:
    kind: str
    n: int
    cutoff: float
    edges: int = 0
    times: dict[str, float | None] = field(default_factory=dict)  # seconds; None = not run
    notes: dict[str, str] = field(default_factory=dict)  # why a peer was not run
    calls: dict[str, int] = field(default_factory=dict)  # timed calls behind each median
    counts_agree: bool = True
    count_notes: list[str] = field(default_factory=list)


def predicted(history: list[tuple[int, float]], n: int) -> float | None:
    """Time at size n extrapolated from the largest size measured (slightly super-linear)."""
    if not history:
        return None
    n0, t0 = history[-1]
    return t0 * (n / n0) ** 1.15


def bench_case(s: System, args: argparse.Namespace, history: dict[str, list[tuple[int, float]]]) -> Row:
    row = Row(s.kind, s.n, s.cutoff)

    def run(lib: str, fn) -> int:
        t, e, reps = timed(fn, args.repeats, args.budget)
        row.times[lib], row.calls[lib] = t, reps
        history.setdefault(f"{lib}-{s.kind}", []).append((s.n, t))
        if lib != "geo3d" and e != row.edges:
            row.counts_agree = False
            row.count_notes.append(f"{lib} {e} != geo3d {row.edges}")
        return e

    def skip(lib: str, why: str) -> None:
        row.times[lib], row.notes[lib] = None, why

    def too_slow(lib: str) -> bool:
        guess = predicted(history.get(f"{lib}-{s.kind}", []), s.n)
        return guess is not None and guess > args.slow_limit

    row.edges = run("geo3d", lambda: run_geo3d(s))
    if vesin is None:
        skip("vesin", "not installed")
    else:
        nl = vesin.NeighborList(cutoff=s.cutoff, full_list=True, n_threads=args.threads)
        run("vesin", lambda: run_vesin(s, nl))
    if torch_cluster is None:
        skip("torch_cluster", "not installed")
    elif s.periodic:
        skip("torch_cluster", "no PBC")
    elif too_slow("torch_cluster"):
        skip("torch_cluster", "skipped (too slow)")
    else:
        x = torch.from_numpy(s.pos)
        run("torch_cluster", lambda: run_torch_cluster(s, x, args.threads))
    if ase is None:
        skip("ase", "not installed")
    elif too_slow("ase"):
        skip("ase", "skipped (too slow)")
    else:
        atoms = ase_atoms(s)
        run("ase", lambda: run_ase(s, atoms))
    return row


# ----------------------------------------------------------------------------- memory


def peak_rss_mib() -> float:
    """Peak resident set of this process (VmHWM), MiB. Unlike ru_maxrss, it starts afresh at
    exec, so a child does not inherit the peak of the process that spawned it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory_child(lib: str, n: int, threads: int) -> None:
    """In a fresh process: one call on n cube points; print the peak RSS before and after, as JSON."""
    torch.set_num_threads(threads)
    s = make_cube(n)
    nl = vesin.NeighborList(cutoff=s.cutoff, full_list=True, n_threads=threads) if lib == "vesin" else None
    base = peak_rss_mib()
    t0 = time.perf_counter()
    edges = run_geo3d(s) if lib == "geo3d" else run_vesin(s, nl)
    seconds = time.perf_counter() - t0
    peak = peak_rss_mib()
    print(
        json.dumps(
            {"lib": lib, "n": n, "edges": edges, "base_mib": base, "peak_mib": peak, "seconds": seconds}
        )
    )


def measure_memory(lib: str, n: int, threads: int) -> dict[str, Any] | None:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-child",
        lib,
        str(n),
        "--threads",
        str(threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"memory measurement for {lib} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def output_floor(edges: int, repeats: int) -> float:
    """Seconds to allocate and write tensors the size of geo3d's output (edge_index [2, E] and
    shifts [E, 3], int64): fresh memory, so mostly page faults and zeroing by the kernel."""

    def fill() -> None:
        a = torch.empty(2, edges, dtype=torch.long)
        b = torch.empty(edges, 3, dtype=torch.long)
        a.fill_(1)
        b.fill_(1)

    return timed(fill, repeats, 5.0)[0]


# ----------------------------------------------------------------------------- report


def fmt_time(row: Row, lib: str) -> str:
    t = row.times.get(lib)
    if t is None:
        return row.notes.get(lib, "-")
    ms = t * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def fmt_ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None:
        return "-"
    return f"{num / den:.2f}" if num / den < 100 else f"{num / den:.0f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| case | N | edges/N | geo3d ms | vesin ms | torch_cluster ms | ASE ms "
        "| geo3d/vesin | torch_cluster/geo3d | ASE/geo3d | counts agree |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        t = r.times
        agree = "yes" if r.counts_agree else "NO: " + "; ".join(r.count_notes)
        lines.append(
            f"| {r.kind} | {r.n} | {r.edges / r.n:.1f} | {fmt_time(r, 'geo3d')} | {fmt_time(r, 'vesin')} "
            f"| {fmt_time(r, 'torch_cluster')} | {fmt_time(r, 'ase')} | {fmt_ratio(t['geo3d'], t.get('vesin'))} "
            f"| {fmt_ratio(t.get('torch_cluster'), t['geo3d'])} | {fmt_ratio(t.get('ase'), t['geo3d'])} | {agree} |"
        )
    return "\n".join(lines)


def scaling(rows: list[Row], kind: str, lib: str, n_small: int, n_big: int) -> float | None:
    by_n = {r.n: r.times.get(lib) for r in rows if r.kind == kind}
    if by_n.get(n_small) is None or by_n.get(n_big) is None:
        return None
    return by_n[n_big] / by_n[n_small]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def versions() -> dict[str, str]:
    def ver(mod: Any) -> str:
        return getattr(mod, "__version__", "installed") if mod is not None else "not installed"

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "vesin": ver(vesin),
        "torch_cluster": ver(torch_cluster),
        "ase": ver(ase),
        "numpy": np.__version__,
        "geo3d": git_commit(),
    }


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    titles = {
        "cube": f"random points in a cube, open, ~{NEIGHBOURS} neighbours",
        "Cu": f"fcc Cu, periodic, cutoff {CU_CUTOFF} Å",
    }
    for ax, kind in zip(axes, ("cube", "Cu"), strict=True):
        sub = [r for r in rows if r.kind == kind]
        for k, lib in enumerate(PEERS):
            pts = [(r.n, r.times[lib]) for r in sub if r.times.get(lib) is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.loglog(xs, ys, marker="osd^"[k], color=f"C{k}", label=lib)
        if sub:  # a linear reference through geo3d's largest point
            n1, t1 = sub[-1].n, sub[-1].times["geo3d"]
            xs = np.array([r.n for r in sub], dtype=float)
            ax.loglog(xs, t1 * xs / n1, "k:", lw=1, label="∝ N")
        ax.set_title(titles[kind], fontsize=10)
        ax.set_xlabel("points N")
        ax.set_ylabel("seconds per call")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(
    rows: list[Row], memory: list[dict[str, Any]], floors: dict[int, float], ctx: dict[str, Any]
) -> str:
    args = ctx["args"]
    v = versions()
    out = [
        "## Radius graph (`python benchmarks/radius_graph.py" + ctx["argv"] + "`)",
        "",
        f"- date: {ctx['date']}",
        f"- machine: {os.cpu_count()} cores, {cpu_model()}; load average (1, 5, 15 min) "
        f"{ctx['load_before']} before, {load_average()} after",
        f"- threads: {args.threads} for every library (geo3d: torch.set_num_threads / OpenMP; vesin: "
        "n_threads; torch_cluster: num_workers; ASE: numpy, single-threaded)",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- cube: uniform points at unit density, cutoff {cube_cutoff():.3f} (~{NEIGHBOURS} neighbours), "
        "open boundaries (ASE gets the bounding box as its cell); Cu: `bulk('Cu', 'fcc', a=3.61, cubic=True)"
        f".repeat(n)`, cutoff {CU_CUTOFF} Å, periodic",
        f"- times: median of {args.repeats} calls after one warm-up (15 where a call takes under 0.1 s, fewer "
        f"where it takes over {args.budget / args.repeats:.0f} s), float64 input, full list (both directions) with shifts; "
        "torch_cluster with max_num_neighbors=N (nothing truncated); a peer is skipped where its time "
        f"extrapolated from the previous size is over {args.slow_limit:.0f} s per call",
        "",
        table(rows),
        "",
    ]
    facts = []
    cu = [r for r in rows if r.kind == "Cu" and r.times.get("vesin")]
    if cu:
        worst = max(cu, key=lambda r: r.times["geo3d"] / r.times["vesin"])
        facts.append(
            f"- geo3d/vesin with PBC (Cu): worst {worst.times['geo3d'] / worst.times['vesin']:.2f} at N={worst.n}"
        )
    cube = [r for r in rows if r.kind == "cube" and r.times.get("vesin")]
    if cube:
        worst = max(cube, key=lambda r: r.times["geo3d"] / r.times["vesin"])
        facts.append(
            f"- geo3d/vesin, open cube: worst {worst.times['geo3d'] / worst.times['vesin']:.2f} at N={worst.n}"
        )
    for r in rows:
        if r.kind == "cube" and r.n == 100_000 and r.times.get("torch_cluster"):
            facts.append(
                f"- torch_cluster/geo3d at 100k points: {r.times['torch_cluster'] / r.times['geo3d']:.2f}"
            )
    for lib in ("geo3d", "vesin", "torch_cluster"):
        sc = scaling(rows, "cube", lib, 10_000, 100_000)
        if sc is not None:
            facts.append(f"- scaling time(100k)/time(10k), cube, {lib}: {sc:.2f} (linear = 10)")
    by_n = {r.n: r for r in rows if r.kind == "cube"}
    if all(n in floors and n in by_n for n in (10_000, 100_000)):
        net = [by_n[n].times["geo3d"] - floors[n] for n in (10_000, 100_000)]
        if min(net) > 0:
            facts.append(
                f"- scaling time(100k)/time(10k), cube, geo3d, less the output floor below: {net[1] / net[0]:.2f}"
            )
    for n, t in sorted(floors.items()):
        r = next(r for r in rows if r.kind == "cube" and r.n == n)
        facts.append(
            f"- allocating and writing an output of that size alone (cube N={n}, {r.edges} edges, "
            f"{r.edges * 40 / 2**20:.0f} MiB of int64): {t * 1e3:.3g} ms, "
            f"{t / r.times['geo3d'] * 100:.0f}% of geo3d's time"
        )
    for m in memory:
        facts.append(
            f"- peak RSS (VmHWM) of a fresh process running {m['lib']} once on {m['n']} cube points "
            f"({m['edges']} edges): {m['peak_mib']:.0f} MiB, {m['peak_mib'] - m['base_mib']:.0f} MiB above the "
            f"{m['base_mib']:.0f} MiB before the call"
        )
    out += facts
    if args.png:
        out += ["", f"![scaling]({args.png.name})"]
    out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run, seconds)")
    parser.add_argument(
        "--out", type=Path, default=None, help="markdown file to write the results section into"
    )
    parser.add_argument("--png", type=Path, default=HERE / "radius_graph.png", help="log-log scaling plot")
    parser.add_argument("--no-png", dest="png", action="store_const", const=None, help="no plot")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every library")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case after the warm-up")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timed calls per peer and case")
    parser.add_argument(
        "--slow-limit", type=float, default=60.0, help="skip a peer predicted slower (s/call)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-child", nargs=2, metavar=("LIB", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), args.threads)
        return 0
    if ase is None:
        parser.error("ASE is needed to build the Cu systems: pip install ase")
    torch.set_num_threads(args.threads)
    ctx = {
        "args": args,
        "argv": "".join(" " + a for a in (sys.argv[1:] if argv is None else argv)),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": load_average(),
    }

    if args.quick:
        cube_sizes, cu_reps, mem_n = [1_000, 10_000, 30_000], [5, 8, 12], 100_000
    else:
        cube_sizes, cu_reps, mem_n = [1_000, 10_000, 100_000, 1_000_000], [5, 8, 12, 19, 29], 1_000_000
    systems = [make_cube(n) for n in cube_sizes] + [make_cu(k) for k in cu_reps]

    v = versions()
    print(
        f"torch {v['torch']}, vesin {v['vesin']}, torch_cluster {v['torch_cluster']}, ase {v['ase']}; "
        f"{args.threads} thread(s); load {ctx['load_before']}",
        flush=True,
    )
    history: dict[str, list[tuple[int, float]]] = {}
    rows = []
    for s in systems:
        print(f"{s.kind} N={s.n} ...", end=" ", flush=True)
        row = bench_case(s, args, history)
        rows.append(row)
        print(", ".join(f"{lib} {fmt_time(row, lib)}" for lib in PEERS) + " (ms)", flush=True)
    floors = {}
    for r in rows:
        if r.kind == "cube" and r.n in (10_000, 100_000, 1_000_000):
            floors[r.n] = output_floor(r.edges, args.repeats)
    memory = []
    if not args.no_memory:
        for lib in ("geo3d", "vesin") if vesin is not None else ("geo3d",):
            m = measure_memory(lib, mem_n, args.threads)
            if m is not None:
                memory.append(m)
    if args.png:
        plot(rows, args.png)
    text = report(rows, memory, floors, ctx)
    print()
    print(text)
    if args.out:
        # One section per thread count: a run on all cores and one on a single thread coexist.
        key = (
            "radius_graph"
            if args.threads == (os.cpu_count() or 1)
            else f"radius_graph-{args.threads}-threads"
        )
        write_section(args.out, text, key)
        print(f"wrote {args.out}")
    return 0 if all(r.counts_agree for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
