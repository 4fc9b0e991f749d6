"""EQGAT-diff sampling: quality and speed against the number of steps, both samplers.

Usage:
    python benchmarks/eqgat_sampling.py --model eqgat-qm9 -n 200 --steps 500 250 100 50 --out results.md

For every (sampler, steps) pair: molecules/s on this machine and the quality
metrics of geo3d.metrics.molecules (legacy and corrected stability, validity,
connected validity, true uniqueness, novelty). Prints a markdown table.

``--workers K`` samples in K processes of one thread each (worker k draws
n/K molecules with seed ``seed + k``) and scores the union, so uniqueness is
measured over all n molecules.

``--valence-aware`` samples with the valence-aware last step and scores, for
each row, both the raw model's molecules and the valence-aware ones of the
same trajectories (two rows, "bonds" column: raw / valence-aware).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from geo3d.apps.generate import sample_molecules
from geo3d.metrics.molecules import evaluate_molecules
from geo3d.registry import load_model

COLUMNS = [
    ("mol_stability_legacy", "mol stab (legacy)"),
    ("mol_stability", "mol stab"),
    ("atom_stability_legacy", "atom stab (legacy)"),
    ("validity", "valid"),
    ("connected_validity", "conn. valid"),
    ("uniqueness", "unique"),
    ("novelty", "novel"),
]


_WORKER_MODEL: torch.nn.Module | None = None


def _init_worker(model_name: str) -> None:
    """Load the model once per worker process (one thread each)."""
    global _WORKER_MODEL
    torch.set_num_threads(1)
    _WORKER_MODEL = load_model(model_name)


def _sample_pair(
    model: torch.nn.Module, n: int, batch_size: int, steps: int, sampler: str, seed: int, aware: bool
) -> tuple[list, list]:
    """(molecules, raw molecules of the same trajectories; empty unless ``aware``)."""
    raw: list = []
    mols = sample_molecules(model, n, batch_size, steps, sampler, seed=seed, valence_aware=aware, raw_out=raw)
    return mols, raw


def _sample_chunk(n: int, batch_size: int, steps: int, sampler: str, seed: int, aware: bool) -> tuple:
    return _sample_pair(_WORKER_MODEL, n, batch_size, steps, sampler, seed, aware)


def sample(
    args: argparse.Namespace,
    model: torch.nn.Module,
    pool: ProcessPoolExecutor | None,
    steps: int,
    sampler: str,
) -> tuple[list, list]:
    """All ``args.n`` molecules (and their raw twins with ``--valence-aware``), split over the
    worker ``pool`` when there is one."""
    aware = args.valence_aware
    if pool is None:
        return _sample_pair(model, args.n, args.batch_size, steps, sampler, args.seed, aware)
    sizes = [args.n // args.workers + (k < args.n % args.workers) for k in range(args.workers)]
    jobs = [
        pool.submit(_sample_chunk, size, args.batch_size, steps, sampler, args.seed + k, aware)
        for k, size in enumerate(sizes)
    ]
    parts = [job.result() for job in jobs]
    return [m for mols, _ in parts for m in mols], [m for _, raw in parts for m in raw]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="eqgat-qm9")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--steps", type=int, nargs="+", default=[500, 250, 100, 50])
    parser.add_argument("--samplers", nargs="+", default=["ancestral", "fast"])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="Sampling processes of 1 thread each.")
    parser.add_argument(
        "--valence-aware", action="store_true", help="Also score the valence-aware last step."
    )
    parser.add_argument("--out", default=None, help="Append the markdown table to this file.")
    args = parser.parse_args()

    model = load_model(args.model)
    from geo3d.apps.generate import load_train_smiles

    train_smiles = load_train_smiles(model)
    threads = (
        f"{torch.get_num_threads()} threads" if args.workers == 1 else f"{args.workers} processes of 1 thread"
    )
    header = "| sampler | steps | bonds | molecules/s | " + " | ".join(name for _, name in COLUMNS) + " |"
    lines = [
        f"EQGAT-diff sampling, model `{args.model}`, {args.n} molecules per row, torch {torch.__version__}, "
        f"{threads}, {platform.processor() or platform.machine()}",
        "",
        header,
        "|" + "---|" * (4 + len(COLUMNS)),
    ]
    # Workers start and load the model once (within the first row's time), not once a row.
    pool = (
        ProcessPoolExecutor(args.workers, initializer=_init_worker, initargs=(args.model,))
        if args.workers > 1
        else None
    )
    with pool or contextlib.nullcontext():
        for sampler in args.samplers:
            for steps in args.steps:
                t0 = time.perf_counter()
                mols, raw = sample(args, model, pool, steps, sampler)
                rate = args.n / (time.perf_counter() - t0)
                rows = [("raw", raw), ("valence-aware", mols)] if args.valence_aware else [("raw", mols)]
                for bonds, group in rows:
                    m = evaluate_molecules(group, train_smiles=train_smiles, posebusters=False, xtb=False)
                    cells = [f"{100 * m[key]:.1f}%" if key in m else "-" for key, _ in COLUMNS]
                    lines.append(
                        f"| {sampler} | {steps} | {bonds} | {rate:.2f} | " + " | ".join(cells) + " |"
                    )
                    print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(table + "\n")


if __name__ == "__main__":
    main()
