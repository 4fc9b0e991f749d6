"""EQGAT-diff sampling: quality and speed against the number of steps, both samplers.

Usage:
    python benchmarks/eqgat_sampling.py --model eqgat-qm9 -n 200 --steps 500 250 100 50 --out results.md

For every (sampler, steps) pair: molecules/s on this machine and the quality
metrics of geo3d.metrics.molecules (legacy and corrected stability, validity,
connected validity, true uniqueness, novelty). Prints a markdown table.

``--workers K`` samples in K processes of one thread each (worker k draws
n/K molecules with seed ``seed + k``) and scores the union, so uniqueness is
measured over all n molecules.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from geo3d.generate import sample_molecules
from geo3d.metrics.molecules import evaluate_molecules
from geo3d.models import load_model

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


def _sample_chunk(n: int, batch_size: int, steps: int, sampler: str, seed: int) -> list:
    return sample_molecules(_WORKER_MODEL, n, batch_size, steps, sampler, seed=seed)


def sample(
    args: argparse.Namespace,
    model: torch.nn.Module,
    pool: ProcessPoolExecutor | None,
    steps: int,
    sampler: str,
) -> list:
    """All ``args.n`` molecules, split over the worker ``pool`` when there is one."""
    if pool is None:
        return sample_molecules(model, args.n, args.batch_size, steps, sampler, seed=args.seed)
    sizes = [args.n // args.workers + (k < args.n % args.workers) for k in range(args.workers)]
    jobs = [
        pool.submit(_sample_chunk, size, args.batch_size, steps, sampler, args.seed + k)
        for k, size in enumerate(sizes)
    ]
    return [mol for job in jobs for mol in job.result()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="eqgat-qm9")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--steps", type=int, nargs="+", default=[500, 250, 100, 50])
    parser.add_argument("--samplers", nargs="+", default=["ancestral", "fast"])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="Sampling processes of 1 thread each.")
    parser.add_argument("--out", default=None, help="Append the markdown table to this file.")
    args = parser.parse_args()

    model = load_model(args.model)
    from geo3d.cli import _load_train_smiles

    train_smiles = _load_train_smiles(model)
    threads = (
        f"{torch.get_num_threads()} threads" if args.workers == 1 else f"{args.workers} processes of 1 thread"
    )
    header = "| sampler | steps | molecules/s | " + " | ".join(name for _, name in COLUMNS) + " |"
    lines = [
        f"EQGAT-diff sampling, model `{args.model}`, {args.n} molecules per row, torch {torch.__version__}, "
        f"{threads}, {platform.processor() or platform.machine()}",
        "",
        header,
        "|" + "---|" * (3 + len(COLUMNS)),
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
                mols = sample(args, model, pool, steps, sampler)
                rate = args.n / (time.perf_counter() - t0)
                m = evaluate_molecules(mols, train_smiles=train_smiles, posebusters=False, xtb=False)
                cells = [f"{100 * m[key]:.1f}%" if key in m else "-" for key, _ in COLUMNS]
                lines.append(f"| {sampler} | {steps} | {rate:.2f} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(table + "\n")


if __name__ == "__main__":
    main()
