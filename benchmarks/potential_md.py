"""MD speed: geo3d's ``Geo3DCalculator`` against mace-torch's ``MACECalculator`` on fcc Cu.

Systems: periodic fcc Cu supercells (a = 3.61 Å, cubic cell repeated k x k x k with
k = round((N / 4)^(1/3)), rattled by 0.02 Å), about 1k, 10k and 50k atoms by default
(``--sizes``); with r_max = 4.5 Å every atom has ~42 neighbours. Velocities from a
Maxwell-Boltzmann distribution at 300 K (same seed for both codes), then ASE's
``VelocityVerlet`` with a 1 fs step: one call to get the forces (graph build, lazy
set-up), ``--warmup`` steps, then ``--steps`` timed steps. The reported step time is
the median of the per-step times (the mean is printed too); steps/s = 1 / median,
atom-steps/s = atoms x steps/s, and "geo3d/MACE" is geo3d's steps/s over MACE's
(above 1: geo3d is faster). Both calculators give energy, forces and, since the cell is
periodic, the stress at every step.

Models (random weights: this measures speed, not accuracy):
  geo3d: ``InteratomicPotential`` with the shipped config (configs/potential_cu_emt.yaml:
    16 channels, 2 layers, lmax 2, hidden_lmax 1, r_max 4.5, elements Cu and Au as the
    shipped ``cu-emt``), or ``--model NAME|PATH`` (a shipped name such as ``cu-emt`` or a
    checkpoint). ``Geo3DCalculator(device="cpu", default_dtype=..., skin=0.5)``: its Verlet
    neighbour list is reused while no atom has moved more than skin / 2.
  MACE: ``mace.modules.ScaleShiftMACE`` as ``mace_run_train --model MACE`` builds it, with
    r_max as geo3d's model, hidden irreps 16x0e+16x1o, max_ell 2, 2 interactions,
    correlation 3 (``--mace-correlation``), 8 Bessel functions, polynomial cutoff p = 5,
    radial MLP [64, 64, 64], readout MLP 16x0e, SiLU gate, first interaction
    RealAgnosticInteractionBlock and then RealAgnosticResidualInteractionBlock, full
    (not reduced) CG, the same elements and avg_num_neighbors as geo3d's model, scale 1,
    shift 0, E0 = 0. Built once in float64, saved with ``torch.save(model)`` to a temp
    file and loaded by ``MACECalculator(model_paths=..., device="cpu", default_dtype=...)``
    (which converts it to float32 when asked). MACE builds its neighbour list (matscipy)
    at every step: that is how its calculator works.

Processes: mace-torch pins e3nn 0.4.4, so it lives in its own virtual environment
(``--mace-python``, default /work/mace-venv/bin/python), made with
``python3 -m venv /work/mace-venv && /work/mace-venv/bin/pip install torch==2.13.0 mace-torch ase``
(pin torch to the version geo3d uses, so that pip does not fetch another). For
symmetry every (code, size, dtype) runs in a fresh subprocess of this same file
(``--worker``): geo3d under this interpreter, MACE under ``--mace-python``; each prints one
line of JSON (timings, peak resident memory, thread count). Threads are torch's default
(``torch.set_num_threads`` is not called) and are printed. Without a working MACE
environment only geo3d is timed.

Usage:
  python benchmarks/potential_md.py                                  # 1k, 10k, 50k atoms, float64
  python benchmarks/potential_md.py --dtype float64,float32 --out benchmarks/RESULTS.md
  python benchmarks/potential_md.py --sizes 32,108 --steps 2 --warmup 1   # smoke run
  python benchmarks/potential_md.py --model cu-emt                   # the shipped weights
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Only the standard library, numpy, torch and ase at the top: workers of this file also run
# under the MACE environment, which has no geo3d (and another e3nn).
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_MACE_PYTHON = "/work/mace-venv/bin/python"
SHIPPED_CONFIG = ROOT / "configs" / "potential_cu_emt.yaml"
SHIPPED_ELEMENTS = [29, 79]  # Cu, Au: the elements of the shipped cu-emt
LATTICE = 3.61  # Å, fcc Cu
TEMPERATURE = 300.0  # K
MACE_HIDDEN = "16x0e+16x1o"
MACE_MAX_ELL = 2
MACE_INTERACTIONS = 2
MACE_RADIAL_MLP = [64, 64, 64]
MACE_NUM_BESSEL = 8
MACE_POLY_CUTOFF = 5
MACE_MLP_IRREPS = "16x0e"


# --------------------------------------------------------------------------- shared
def fcc_cu(n_target: int, seed: int = 0):
    """Periodic fcc Cu, the cubic 4-atom cell repeated k times along each axis (k >= 2)."""
    from ase.build import bulk

    k = max(2, round((n_target / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=LATTICE, cubic=True).repeat((k, k, k))
    atoms.rattle(stdev=0.02, seed=seed)
    return atoms


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_md(atoms, calc, steps: int, warmup: int, seed: int) -> dict:
    """First force call, ``warmup`` steps, then ``steps`` timed VelocityVerlet steps (1 fs)."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE, rng=np.random.default_rng(seed))
    Stationary(atoms)
    calls = [0]
    calculate = calc.calculate

    def counted(*args, **kwargs):
        calls[0] += 1
        return calculate(*args, **kwargs)

    calc.calculate = counted  # count model evaluations: one per MD step is expected
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    t0 = time.perf_counter()
    atoms.get_forces()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    if warmup > 0:
        dyn.run(warmup)
    warm = time.perf_counter() - t0
    builds0 = getattr(calc, "neighbor_list_builds", None)
    calls0 = calls[0]
    stamps: list[float] = []
    dyn.attach(lambda: stamps.append(time.perf_counter()), interval=1)
    dyn.run(steps)  # the observer also fires once before the first step
    per_step = [b - a for a, b in itertools.pairwise(stamps)]
    builds = getattr(calc, "neighbor_list_builds", None)
    forces = atoms.get_forces()
    return {
        "n_atoms": len(atoms),
        "first_call_s": first,
        "warmup_s": warm,
        "step_times_s": per_step,
        "median_s": statistics.median(per_step),
        "mean_s": statistics.fmean(per_step),
        "evaluations": calls[0] - calls0,
        "nl_builds": None if builds is None else builds - builds0,
        "max_force": float(np.abs(forces).max()),
        "temperature_K": float(atoms.get_temperature()),
        "finite": bool(np.isfinite(forces).all() and np.isfinite(atoms.get_potential_energy())),
        "threads": torch.get_num_threads(),
        "peak_rss_mib": peak_rss_mib(),
    }


# --------------------------------------------------------------------------- workers
def worker_geo3d(args: argparse.Namespace) -> dict:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from geo3d.calculators import Geo3DCalculator

    atoms = fcc_cu(args.size, args.seed)
    calc = Geo3DCalculator(
        model=args.model_path, device="cpu", default_dtype=args.dtype, skin=args.skin, compile=args.compile
    )
    return time_md(atoms, calc, args.steps, args.warmup, args.seed)


def mace_environment() -> None:
    """What ``import mace`` sets itself: e3nn 0.4.4 and MACE's model files need full (not weights-only) torch.load."""
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"


def worker_mace(args: argparse.Namespace) -> dict:
    mace_environment()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from mace.calculators import MACECalculator

    atoms = fcc_cu(args.size, args.seed)
    calc = MACECalculator(model_paths=args.model_path, device="cpu", default_dtype=args.dtype)
    return time_md(atoms, calc, args.steps, args.warmup, args.seed)


def worker_mace_build(args: argparse.Namespace) -> dict:
    """Build the random-weight MACE (float64) and ``torch.save`` it to ``--model-path``."""
    mace_environment()
    import warnings

    warnings.filterwarnings("ignore")
    from e3nn import o3
    from mace import modules

    spec = json.loads(args.spec)
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(args.seed)
    elements = [int(z) for z in spec["elements"]]
    model = modules.ScaleShiftMACE(
        r_max=float(spec["r_max"]),
        num_bessel=MACE_NUM_BESSEL,
        num_polynomial_cutoff=MACE_POLY_CUTOFF,
        max_ell=MACE_MAX_ELL,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=MACE_INTERACTIONS,
        num_elements=len(elements),
        hidden_irreps=o3.Irreps(MACE_HIDDEN),
        MLP_irreps=o3.Irreps(MACE_MLP_IRREPS),
        atomic_energies=np.zeros(len(elements)),
        avg_num_neighbors=float(spec["avg_num_neighbors"]),
        atomic_numbers=elements,
        correlation=int(spec["correlation"]),
        gate=modules.gate_dict["silu"],
        radial_MLP=MACE_RADIAL_MLP,
        use_reduced_cg=False,
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    torch.save(model, args.model_path)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def worker_mace_info(args: argparse.Namespace) -> dict:
    mace_environment()
    import importlib.metadata as md

    import ase
    import e3nn
    from mace.calculators import MACECalculator  # noqa: F401  (the import is the check)

    return {
        "mace-torch": md.version("mace-torch"),
        "torch": torch.__version__,
        "e3nn": e3nn.__version__,
        "ase": ase.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


WORKERS = {
    "geo3d": worker_geo3d,
    "mace": worker_mace,
    "mace-build": worker_mace_build,
    "mace-info": worker_mace_info,
}


# --------------------------------------------------------------------------- driver
def spawn(python: str, worker: str, extra: list[str], timeout: float) -> tuple[dict | None, str]:
    """Run a worker of this file under ``python``: (its JSON, or None and why not)."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", worker, *extra]
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    # geo3d's calculator keeps freed memory for reuse (geo3d.runtime); every worker, MACE's
    # included, starts with the same malloc settings, so neither side alone pays for page faults.
    from geo3d.runtime import RETAIN_FREED_MEMORY_ENV

    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **RETAIN_FREED_MEMORY_ENV},
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    except OSError as exc:
        return None, f"could not start {python}: {exc}"
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line), ""
            except json.JSONDecodeError:
                break
    tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
    return None, f"exit {proc.returncode}: " + " | ".join(tail)


def cpu_model() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def geo3d_model(args: argparse.Namespace, tmp: Path) -> tuple[str, dict, str, int]:
    """(checkpoint path or shipped name, config, description, parameter count) of the geo3d model."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from geo3d.checkpoint import load_checkpoint, save_checkpoint
    from geo3d.models.potential import InteratomicPotential
    from geo3d.registry import SHIPPED

    if args.model:
        path = SHIPPED[args.model].path if args.model in SHIPPED else Path(args.model)
        ckpt = load_checkpoint(path)
        params = sum(p.numel() for p in InteratomicPotential(ckpt["config"]).parameters())
        return args.model, dict(ckpt["config"]), f"{args.model} (trained weights)", params
    import yaml

    config = dict(yaml.safe_load(SHIPPED_CONFIG.read_text())["model"])
    config["elements"] = SHIPPED_ELEMENTS
    torch.manual_seed(args.seed)
    net = InteratomicPotential(config).double()
    path = tmp / "geo3d_random.pt"
    save_checkpoint(
        path, arch="potential", task="bench", config=net.config, state_dict=net.state_dict(), metrics={}
    )
    params = sum(p.numel() for p in net.parameters())
    return str(path), dict(net.config), f"random weights, {SHIPPED_CONFIG.relative_to(ROOT)}", params


def fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,50000", help="target atom counts, comma-separated")
    ap.add_argument("--dtype", default="float64", help="float64, float32 or both: float64,float32")
    ap.add_argument("--steps", type=int, default=5, help="timed MD steps per case (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="MD steps before timing")
    ap.add_argument(
        "--model", help="geo3d model: shipped name (cu-emt) or checkpoint; default random weights"
    )
    ap.add_argument("--mace-python", default=DEFAULT_MACE_PYTHON, help="python of the mace-torch environment")
    ap.add_argument("--mace-correlation", type=int, default=3, help="MACE correlation order (its default: 3)")
    ap.add_argument("--skin", type=float, default=0.0, help="geo3d calculator's Verlet skin (Å)")
    ap.add_argument(
        "--compile", action="store_true", help="geo3d: torch.compile the energy (compiles in the warm-up)"
    )
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per subprocess")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="append the markdown table to this file")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)), flush=True)
        return

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in ("float64", "float32")]
    if bad or args.steps < 1 or args.warmup < 0:
        ap.error(f"--dtype takes float64 and/or float32 (got {bad}); --steps >= 1; --warmup >= 0")
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed)]

    import ase
    import e3nn

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from geo3d.ops import backend_status
    from geo3d.version import __version__ as geo3d_version

    with tempfile.TemporaryDirectory(prefix="potential_md_") as tmpdir:
        tmp = Path(tmpdir)
        model_arg, config, description, g_params = geo3d_model(args, tmp)

        mace_info, mace_why = None, ""
        if not Path(args.mace_python).exists():
            mace_why = f"{args.mace_python} not found"
        else:
            mace_info, mace_why = spawn(args.mace_python, "mace-info", [], args.timeout)
        mace_path, m_params = tmp / "mace_random.model", None
        if mace_info is not None:
            spec = {
                "elements": config["elements"],
                "r_max": config["r_max"],
                "avg_num_neighbors": config.get("avg_num_neighbors", 30.0),
                "correlation": args.mace_correlation,
            }
            built, mace_why = spawn(
                args.mace_python,
                "mace-build",
                ["--model-path", str(mace_path), "--spec", json.dumps(spec), "--seed", str(args.seed)],
                args.timeout,
            )
            if built is None:
                mace_info = None
            else:
                m_params = built["parameters"]

        backends = ", ".join(k for k, (ok, _) in backend_status().items() if ok)
        header = (
            f"Potential MD, {datetime.date.today()}, {cpu_model()} ({os.cpu_count()} cores), "
            f"{torch.get_num_threads()} threads, geo3d {geo3d_version} (torch {torch.__version__}, "
            f"e3nn {e3nn.__version__}, ase {ase.__version__})"
        )
        if mace_info is not None:
            header += (
                f", mace-torch {mace_info['mace-torch']} (torch {mace_info['torch']}, "
                f"e3nn {mace_info['e3nn']}, {mace_info['threads']} threads)"
            )
        print(header)
        print(f"load average (1, 5, 15 min) before: {load_average()}")
        print(
            f"geo3d: {description}: channels {config['channels']}, layers {config['num_layers']}, "
            f"lmax {config['lmax']}, hidden_lmax {config['hidden_lmax']}, r_max {config['r_max']}, "
            f"elements {config['elements']}; {g_params} parameters; skin {args.skin} Å; "
            f"{'torch.compile' if args.compile else 'eager'}; "
            f"kernel backends available: {backends}"
        )
        if mace_info is not None:
            print(
                f"MACE: random weights, ScaleShiftMACE, hidden {MACE_HIDDEN}, max_ell {MACE_MAX_ELL}, "
                f"{MACE_INTERACTIONS} interactions, correlation {args.mace_correlation}, r_max {config['r_max']}, "
                f"radial MLP {MACE_RADIAL_MLP}, {MACE_NUM_BESSEL} Bessel, elements {config['elements']}; "
                f"{m_params} parameters"
            )
        else:
            print(
                f"MACE: not timed ({mace_why}); to time it, make the environment: python3 -m venv DIR && "
                f"DIR/bin/pip install torch=={torch.__version__.split('+')[0]} mace-torch ase, "
                "then --mace-python DIR/bin/python"
            )
        print(
            f"MD: VelocityVerlet, 1 fs, {TEMPERATURE:.0f} K start, {args.warmup} warm-up + "
            f"{args.steps} timed steps; median step time",
            flush=True,
        )

        rows = []
        for dtype in dtypes:
            for size in sizes:
                extra = [*common, "--size", str(size), "--dtype", dtype]
                g, g_why = spawn(
                    sys.executable,
                    "geo3d",
                    [*extra, "--model-path", model_arg, "--skin", str(args.skin)]
                    + (["--compile"] if args.compile else []),
                    args.timeout,
                )
                m, m_why = (None, mace_why or "not timed")
                if mace_info is not None:
                    m, m_why = spawn(
                        args.mace_python, "mace", [*extra, "--model-path", str(mace_path)], args.timeout
                    )
                n = (g or m or {}).get("n_atoms", size)
                g_sps = 1.0 / g["median_s"] if g else None
                m_sps = 1.0 / m["median_s"] if m else None
                ratio = g_sps / m_sps if g_sps and m_sps else None
                case = f"fcc Cu, {n} atoms"
                rows.append((case, dtype, g_sps, m_sps, g_sps and g_sps * n, m_sps and m_sps * n, ratio))
                print(f"{case}, {dtype}:")
                for name, r, why in (("geo3d", g, g_why), ("MACE", m, m_why)):
                    if r is None:
                        print(
                            f"  {name:5s} failed: {why}"
                            if name == "geo3d" or mace_info
                            else f"  {name:5s} n/a"
                        )
                        continue
                    nl = "" if r["nl_builds"] is None else f", {r['nl_builds']} neighbour-list builds"
                    print(
                        f"  {name:5s} {r['median_s'] * 1e3:10.1f} ms/step (mean {r['mean_s'] * 1e3:.1f})  "
                        f"{1.0 / r['median_s']:8.3f} steps/s  {n / r['median_s']:10.0f} atom-steps/s  "
                        f"first call {r['first_call_s']:.2f} s  peak RSS {r['peak_rss_mib']:.0f} MiB  "
                        f"{r['threads']} threads, {r['evaluations']} evaluations{nl}"
                        f"{'' if r['finite'] else '  NON-FINITE forces/energy'}"
                    )
                if ratio is not None:
                    print(f"  geo3d/MACE steps/s: {ratio:.2f}x")
                sys.stdout.flush()
        print(f"load average (1, 5, 15 min) after: {load_average()}")

    table = [
        "| case | dtype | geo3d steps/s | MACE steps/s | geo3d atom-steps/s | MACE atom-steps/s | geo3d/MACE |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for case, dtype, g_sps, m_sps, g_as, m_as, ratio in rows:
        table.append(
            f"| {case} | {dtype} | {fmt(g_sps, '.3f')} | {fmt(m_sps, '.3f')} | {fmt(g_as, '.0f')} | "
            f"{fmt(m_as, '.0f')} | {fmt(ratio, '.2f')} |"
        )
    print()
    print("\n".join(table))
    if args.out:
        notes = (
            f"geo3d: {description}, {g_params} parameters. MACE: "
            + (
                f"random ScaleShiftMACE {MACE_HIDDEN}, max_ell {MACE_MAX_ELL}, {MACE_INTERACTIONS} "
                f"interactions, correlation {args.mace_correlation}, {m_params} parameters."
                if mace_info is not None
                else f"not timed ({mace_why})."
            )
            + f" VelocityVerlet 1 fs, {args.warmup} warm-up + {args.steps} timed steps, median."
        )
        with args.out.open("a") as fh:
            fh.write("\n".join(["", f"### {header}", "", notes, "", *table]) + "\n")


if __name__ == "__main__":
    main()
