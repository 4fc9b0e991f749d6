"""The ``geo3d`` command."""

from __future__ import annotations

import importlib
import platform
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="geo3d: equivariant and rotation-invariant networks for 3D molecules and point clouds.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

STRUCTURES = Path(__file__).resolve().parent / "resources" / "structures"


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=1)


@app.command()
def info() -> None:
    """Versions, threads and which kernel backends are available (and why not)."""
    import torch

    from geo3d.ops import backend_status
    from geo3d.version import __version__

    table = Table(title="geo3d", show_header=False)
    table.add_row("geo3d", __version__)
    table.add_row("python", platform.python_version())
    for mod in [
        "torch",
        "e3nn",
        "torch_geometric",
        "ase",
        "rdkit",
        "numpy",
        "torch_scatter",
        "torch_cluster",
    ]:
        try:
            version = getattr(importlib.import_module(mod), "__version__", "?")
        except ImportError:
            version = "not installed (optional)" if mod in ("torch_scatter", "torch_cluster") else "MISSING"
        table.add_row(mod, str(version))
    table.add_row("torch threads", str(torch.get_num_threads()))
    table.add_row("torch CUDA", str(torch.version.cuda) if torch.version.cuda else "CPU build")
    console.print(table)
    backends = Table(title="kernel backends")
    backends.add_column("backend")
    backends.add_column("available")
    backends.add_column("details")
    for name, (ok, why) in backend_status().items():
        backends.add_row(name, "[green]yes[/]" if ok else "[red]no[/]", why)
    console.print(backends)


@app.command()
def models() -> None:
    """List the models shipped with geo3d (name, task, size, headline metric)."""
    from geo3d.models import describe_shipped

    rows = describe_shipped()
    if not rows:
        console.print("No models ship with this geo3d version yet; pass a checkpoint path to --model.")
        return
    table = Table(title="shipped models")
    for col in ["name", "task", "parameters", "file (MB)", "headline metric", "description"]:
        table.add_column(col)
    for r in rows:
        params = f"{r['params']:,}" if r["params"] is not None else "-"
        size = f"{r['size_mb']:.2f}" if r["size_mb"] is not None else "-"
        table.add_row(r["name"], r["task"], params, size, r["headline"], r["description"])
    console.print(table)


def _neighbor_report(path: Path, cutoff: float, backend: str | None, check_ase: bool) -> bool:
    """Radius graph of every frame in ``path``; prints a summary, returns whether ASE agreed."""
    import torch

    from geo3d.data import StructureFileError, atoms_to_data, read_structures
    from geo3d.graph import edge_lengths, edge_vectors
    from geo3d.ops import canonical_order, radius_graph

    try:
        frames = read_structures(path)
    except (FileNotFoundError, StructureFileError) as exc:
        _fail(str(exc))
    all_ok = True
    for k, atoms in enumerate(frames):
        try:
            data = atoms_to_data(atoms, source=f"{path} frame {k}")
            t0 = time.perf_counter()
            edge_index, shifts = radius_graph(data.pos, cutoff, cell=data.cell, pbc=data.pbc, backend=backend)
            elapsed = time.perf_counter() - t0
        except StructureFileError as exc:
            _fail(str(exc))
        except (ValueError, RuntimeError) as exc:
            _fail(f"{path} frame {k}: {exc}")
        n = data.pos.shape[0]
        lengths = edge_lengths(edge_vectors(data.pos, edge_index, shifts, data.cell))
        counts = torch.bincount(edge_index[1], minlength=n)
        images = int((shifts != 0).any(dim=1).sum())
        lengths_abc = atoms.cell.cellpar()
        title = f"{path.name} [{k}]  {atoms.get_chemical_formula()}  ({n} atoms)"
        table = Table(title=title, show_header=False)
        table.add_row("cell a b c (Å)", " ".join(f"{x:.3f}" for x in lengths_abc[:3]))
        table.add_row("angles (°)", " ".join(f"{x:.1f}" for x in lengths_abc[3:]))
        table.add_row("pbc", str(data.pbc[0].tolist()))
        table.add_row("cutoff (Å)", f"{cutoff}")
        table.add_row("edges (directed)", f"{edge_index.shape[1]:,} ({images:,} cross the cell boundary)")
        if n:
            table.add_row(
                "neighbours / atom",
                f"min {int(counts.min())}  mean {counts.float().mean():.2f}  max {int(counts.max())}",
            )
        if lengths.numel():
            table.add_row("shortest distance (Å)", f"{float(lengths.min()):.4f}")
        table.add_row("time", f"{elapsed * 1e3:.2f} ms")
        if check_ase:
            from ase.neighborlist import neighbor_list

            i, j, s = neighbor_list("ijS", atoms, cutoff)
            ref = canonical_order(
                torch.stack([torch.from_numpy(j), torch.from_numpy(i)]), torch.from_numpy(s)
            )
            ours = canonical_order(edge_index, shifts)
            ok = torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])
            all_ok &= ok
            verdict = (
                "[green]identical edges and shifts[/]"
                if ok
                else f"[red]DIFFERENT ({ref[0].shape[1]} edges)[/]"
            )
            table.add_row("vs ase.neighborlist", verdict)
        console.print(table)
    return all_ok


@app.command()
def neighbors(
    path: Path = typer.Argument(..., help="Structure file ASE can read (extxyz, cif, POSCAR, xyz, ...)."),
    cutoff: float = typer.Option(5.0, "--cutoff", "-r", help="Cutoff radius in Å."),
    backend: str | None = typer.Option(None, help="reference, cpu or cuda (default: fastest available)."),
    check_ase: bool = typer.Option(False, "--check-ase", help="Compare with ase.neighborlist.neighbor_list."),
) -> None:
    """Build the radius graph (with periodic images) of a structure file and summarise it."""
    if not _neighbor_report(path, cutoff, backend, check_ase):
        raise typer.Exit(code=1)


@app.command()
def demo(cutoff: float = typer.Option(5.0, "--cutoff", "-r", help="Cutoff radius in Å.")) -> None:
    """Radius graphs with PBC on the structures embedded in geo3d, checked against ASE."""
    ok = True
    for name in ["cu_fcc_rattled.extxyz", "quartz_alpha.extxyz", "cu_slab.extxyz"]:
        ok &= _neighbor_report(STRUCTURES / name, cutoff, None, check_ase=True)
    if not ok:
        _fail("geo3d and ASE disagree")
    console.print("[bold green]All radius graphs match ase.neighborlist exactly.[/]")


if __name__ == "__main__":
    app()
