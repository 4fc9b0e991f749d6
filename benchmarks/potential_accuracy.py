"""Accuracy of interatomic potentials on a labelled extxyz file, through their ASE calculators.

Any number of geo3d models (``--geo3d NAME|PATH``: a shipped name such as ``cu-emt`` or a
checkpoint, evaluated with ``Geo3DCalculator``) and mace-torch models (``--mace PATH``: a
``.model`` file written by ``mace_run_train``, evaluated with ``MACECalculator``) are run on
every frame of ``--data`` (default: the held-out ``datasets/cu_emt/test.xyz``), in float64
unless ``--dtype`` says otherwise, and compared with the labels stored in the file.

Metrics (the definitions of ``geo3d.train.potential_task.evaluate_potential``, the numbers
geo3d reports when it trains, so that both codes are scored by the same arithmetic):
  energy: (E_pred - E_ref) / n_atoms per frame; MAE and RMSE over frames, meV/atom.
  forces: every Cartesian component of every atom; MAE and RMSE, meV/Å.
  stress: ASE's sign (``atoms.get_stress(voigt=False)``), periodic frames only, meV/Å^3; MAE
    over the 9 components of the 3x3 tensor (what ``evaluate_potential`` averages: each
    off-diagonal component counts twice) and MAE over the 6 Voigt components (xx, yy, zz, yz,
    xz, xy). The two differ when the off-diagonal errors differ from the diagonal ones.

Labels are read with ``ase.io.read``: ``--energy-key``, ``--forces-key`` and ``--stress-key`` are
looked up in ``atoms.info`` / ``atoms.arrays`` first, then in the calculator results that ASE
makes of ``energy``/``forces``/``stress`` when it reads an extxyz file (as geo3d's reader does).
Stress labels may be 6 (Voigt), 9 or 3x3 numbers.

Processes: as in ``benchmarks/potential_md.py`` (whose MACE environment and helpers this file
imports), mace-torch pins e3nn 0.4.4 and lives in its own virtual environment
(``--mace-python``, default /work/mace-venv/bin/python); every model is evaluated in a fresh
subprocess of this file (``--worker``), geo3d under this interpreter and MACE under
``--mace-python``, with ``--threads`` torch threads (default 1), and prints one line of JSON.

Usage:
  python benchmarks/potential_accuracy.py                                   # shipped cu-emt only
  python benchmarks/potential_accuracy.py --geo3d cu-emt --mace /tmp/mace_cu_emt/run/mace_cu_emt.model
  python benchmarks/potential_accuracy.py --data datasets/xtb_organic/test.xyz --geo3d xtb-organic
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Only the standard library, numpy, torch and ase at the top: workers of this file also run
# under the MACE environment, which has no geo3d (and another e3nn).
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from potential_md import DEFAULT_MACE_PYTHON, cpu_model, load_average, mace_environment  # noqa: E402

DEFAULT_DATA = ROOT / "datasets" / "cu_emt" / "test.xyz"
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))  # ASE's Voigt order


# --------------------------------------------------------------------------- shared
def label(atoms, key: str):
    """A label of ``atoms`` under ``key``: info, arrays, then the stored calculator results (or None)."""
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    results = getattr(atoms.calc, "results", None) or {}
    return results.get(key)


def as_3x3(stress) -> np.ndarray:
    """A stress label (6 Voigt, 9 or 3x3 numbers) as a 3x3 array."""
    s = np.asarray(stress, dtype=np.float64)
    if s.shape == (6,):
        xx, yy, zz, yz, xz, xy = s
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    return s.reshape(3, 3)


def read_labelled(path: Path, energy_key: str, forces_key: str, stress_key: str) -> list:
    """(atoms without calculator, energy, forces [N, 3], stress 3x3 or None) for every frame of ``path``."""
    from ase.io import read

    frames = []
    for k, atoms in enumerate(read(str(path), index=":")):
        energy, forces = label(atoms, energy_key), label(atoms, forces_key)
        if energy is None or forces is None:
            raise SystemExit(f"{path}, frame {k}: no {energy_key!r} or {forces_key!r} label")
        stress = label(atoms, stress_key) if atoms.pbc.all() else None
        bare = atoms.copy()
        bare.calc = None
        frames.append((bare, float(energy), np.asarray(forces, dtype=np.float64), stress))
    return frames


def score(frames: list, calc) -> dict:
    """MAE/RMSE of energy per atom, force components and stress (3x3 and Voigt) of ``calc`` on ``frames``."""
    de, df, ds9, ds6 = [], [], [], []
    t0 = time.perf_counter()
    for atoms, energy, forces, stress in frames:
        atoms.calc = calc
        de.append((atoms.get_potential_energy() - energy) / len(atoms))
        df.append((atoms.get_forces() - forces).reshape(-1))
        if stress is not None:
            diff = atoms.get_stress(voigt=False) - as_3x3(stress)
            ds9.append(diff.reshape(-1))
            ds6.append(np.array([diff[i, j] for i, j in VOIGT]))
    seconds = time.perf_counter() - t0
    out = {"frames": len(frames), "atoms": sum(len(f[0]) for f in frames), "eval_s": seconds}
    for name, errs in (("energy", de), ("forces", df), ("stress", ds9), ("stress_voigt", ds6)):
        if errs:
            e = np.concatenate([np.atleast_1d(x) for x in errs]) * 1000.0  # eV -> meV
            out[f"{name}_mae"] = float(np.abs(e).mean())
            out[f"{name}_rmse"] = float(np.sqrt(np.square(e).mean()))
    return out


# --------------------------------------------------------------------------- workers
def worker_geo3d(args: argparse.Namespace) -> dict:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from geo3d.calculators import Geo3DCalculator
    from geo3d.version import __version__

    calc = Geo3DCalculator(model=args.model, device="cpu", default_dtype=args.dtype)
    frames = read_labelled(args.data, args.energy_key, args.forces_key, args.stress_key)
    return {
        **score(frames, calc),
        "parameters": sum(p.numel() for p in calc.net.parameters()),
        "version": f"geo3d {__version__}",
        "threads": torch.get_num_threads(),
    }


def worker_mace(args: argparse.Namespace) -> dict:
    mace_environment()
    import importlib.metadata as md
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from mace.calculators import MACECalculator

    calc = MACECalculator(model_paths=args.model, device="cpu", default_dtype=args.dtype)
    frames = read_labelled(args.data, args.energy_key, args.forces_key, args.stress_key)
    return {
        **score(frames, calc),
        "parameters": sum(p.numel() for p in calc.models[0].parameters()),
        "version": f"mace-torch {md.version('mace-torch')}",
        "threads": torch.get_num_threads(),
    }


WORKERS = {"geo3d": worker_geo3d, "mace": worker_mace}


# --------------------------------------------------------------------------- driver
def spawn(python: str, worker: str, extra: list[str], timeout: float) -> tuple[dict | None, str]:
    """Run a worker of this file under ``python``: (its JSON, or None and why not)."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", worker, *extra]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
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


def fmt(r: dict, key: str, spec: str = ".2f") -> str:
    return format(r[key], spec) if key in r else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled extxyz (default: %(default)s)")
    ap.add_argument("--geo3d", action="append", help="geo3d model: shipped name or checkpoint (repeatable)")
    ap.add_argument("--mace", action="append", default=[], help="mace-torch .model file (repeatable)")
    ap.add_argument("--mace-python", default=DEFAULT_MACE_PYTHON, help="python of the mace-torch environment")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (OMP_NUM_THREADS)")
    ap.add_argument("--energy-key", default="energy")
    ap.add_argument("--forces-key", default="forces")
    ap.add_argument("--stress-key", default="stress")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per subprocess")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)), flush=True)
        return

    geo3d_models = args.geo3d if args.geo3d is not None else ["cu-emt"]
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    common = ["--data", str(args.data.resolve()), "--dtype", args.dtype]
    common += [
        "--energy-key",
        args.energy_key,
        "--forces-key",
        args.forces_key,
        "--stress-key",
        args.stress_key,
    ]
    runs = [("geo3d", sys.executable, m) for m in geo3d_models]
    runs += [("MACE", args.mace_python, str(Path(m).resolve())) for m in args.mace]

    print(
        f"Potential accuracy, {datetime.date.today()}, {cpu_model()} ({os.cpu_count()} cores), "
        f"load average {load_average()}; data {args.data} ({args.dtype}, {args.threads} thread(s) per model)"
    )
    rows = []
    for code, python, model in runs:
        worker = "geo3d" if code == "geo3d" else "mace"
        r, why = spawn(python, worker, [*common, "--model", model], args.timeout)
        if r is None:
            print(f"  {code} {model}: failed: {why}")
            continue
        print(
            f"  {code} {model}: {r['version']}, {r['parameters']} parameters, {r['frames']} frames / "
            f"{r['atoms']} atoms in {r['eval_s']:.1f} s, {r['threads']} thread(s)",
            flush=True,
        )
        rows.append((code, model, r))

    print()
    print(
        "| code | model | parameters | energy MAE (meV/atom) | energy RMSE (meV/atom) | force MAE (meV/Å) "
        "| force RMSE (meV/Å) | stress MAE, 3x3 (meV/Å^3) | stress MAE, Voigt 6 (meV/Å^3) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for code, model, r in rows:
        name = model if code == "geo3d" else Path(model).name
        print(
            f"| {code} | `{name}` | {r['parameters']:,} | {fmt(r, 'energy_mae')} | {fmt(r, 'energy_rmse')} | "
            f"{fmt(r, 'forces_mae', '.1f')} | {fmt(r, 'forces_rmse', '.1f')} | {fmt(r, 'stress_mae')} | "
            f"{fmt(r, 'stress_voigt_mae')} |"
        )
    if len(rows) < len(runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
