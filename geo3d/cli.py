"""The ``geo3d`` command.

One module for all commands (~570 lines): each is its typer options, a call into
:mod:`geo3d.apps` or :mod:`geo3d.train`, and the printing of the result; no command
holds application logic (that is the rule of the cli layer, docs/ARCHITECTURE.md).
"""

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
    from geo3d.registry import describe_shipped

    rows = describe_shipped()
    if not rows:
        console.print("No models ship with this geo3d version yet; pass a checkpoint path to --model.")
        return
    # Descriptions are long: inside the table on wide consoles, listed below it on narrow ones
    # (an 80-column pipe would otherwise fold every column into a tall, unreadable grid).
    wide = console.width >= 140
    table = Table(title="shipped models")
    # names, tasks and numbers never wrap or truncate; the metric wraps at its " = "
    table.add_column("name", no_wrap=True)
    table.add_column("task", no_wrap=True)
    table.add_column("params", no_wrap=True, justify="right")
    if wide:
        table.add_column("MB", no_wrap=True, justify="right")
    table.add_column("headline metric")
    if wide:
        table.add_column("description")
    for r in rows:
        params = f"{r['params']:,}" if r["params"] is not None else "-"
        size = f"{r['size_mb']:.2f}" if r["size_mb"] is not None else "-"
        headline = r["headline"].replace("=", " = ")
        if wide:
            table.add_row(r["name"], r["task"], params, size, headline, r["description"])
        else:
            table.add_row(r["name"], r["task"], params, headline)
    console.print(table)
    if not wide:
        for r in rows:
            size = f", {r['size_mb']:.2f} MB" if r["size_mb"] is not None else ""
            console.print(f"[bold]{r['name']}[/bold]{size}: {r['description']}")


def _neighbor_report(path: Path, cutoff: float, backend: str | None, check_ase: bool) -> bool:
    """Prints :func:`geo3d.apps.neighbors.file_neighbors` of ``path``; returns whether ASE agreed."""
    from geo3d.apps.neighbors import file_neighbors
    from geo3d.data import StructureFileError

    try:
        frames = file_neighbors(path, cutoff, backend, check_ase)
    except (FileNotFoundError, StructureFileError, ValueError) as exc:
        _fail(str(exc))
    for k, r in enumerate(frames):
        table = Table(title=f"{path.name} [{k}]  {r.formula}  ({r.num_atoms} atoms)", show_header=False)
        table.add_row("cell a b c (Å)", " ".join(f"{x:.3f}" for x in r.cellpar[:3]))
        table.add_row("angles (°)", " ".join(f"{x:.1f}" for x in r.cellpar[3:]))
        table.add_row("pbc", str(list(r.pbc)))
        table.add_row("cutoff (Å)", f"{cutoff}")
        table.add_row("edges (directed)", f"{r.num_edges:,} ({r.num_image_edges:,} cross the cell boundary)")
        if r.neighbours is not None:
            lo, mean, hi = r.neighbours
            table.add_row("neighbours / atom", f"min {lo}  mean {mean:.2f}  max {hi}")
        if r.shortest is not None:
            table.add_row("shortest distance (Å)", f"{r.shortest:.4f}")
        table.add_row("time", f"{r.seconds * 1e3:.2f} ms")
        if r.matches_ase is not None:
            verdict = (
                "[green]identical edges and shifts[/]"
                if r.matches_ase
                else f"[red]DIFFERENT ({r.ase_num_edges} edges)[/]"
            )
            table.add_row("vs ase.neighborlist", verdict)
        console.print(table)
    return all(r.matches_ase is not False for r in frames)


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


@app.command()
def train(
    config: Path = typer.Argument(..., help="Experiment YAML (configs/*.yaml)."),
    override: list[str] = typer.Option([], "--set", "-s", help="Override a field, e.g. -s train.epochs=3."),
    device: str = typer.Option("cpu", help="cpu or cuda (cuda:K)."),
    resume: bool = typer.Option(True, help="Continue from out_dir/last.pt when it exists."),
    max_minutes: float | None = typer.Option(None, help="Stop cleanly (checkpoint written) after this long."),
) -> None:
    """Train a model from a YAML config (progress bar, atomic checkpoints, resume; torchrun for DDP)."""
    from geo3d.train import ConfigError, load_config, make_task
    from geo3d.train.trainer import train as run_training

    try:
        cfg = load_config(config, override)
    except (FileNotFoundError, ConfigError) as exc:
        _fail(str(exc))
    best = run_training(make_task(cfg), cfg, device=device, resume=resume, max_minutes=max_minutes)
    console.print(f"best checkpoint: {best}")


@app.command()
def evaluate(
    model: str = typer.Option(
        ...,
        "--model",
        help="Shipped name or checkpoint: a Shapes classifier/segmenter or a Rooms scene model.",
    ),
    rotation: str = typer.Option("so3", "--rotation", help="Shapes: test-time rotation, none, z or so3."),
    protocol: str = typer.Option(
        "",
        "--protocol",
        help="Shapes: 'all' tests under z and SO(3) (keys 'TRAIN/TEST', e.g. 'z/so3'); part segmenters "
        "also on Articulated shapes, every part turned about its joint (keys 'TRAIN/TEST+articulated'). "
        "Scene models: 'all' or one of canonical, scene_z, per_object_z, scene_so3 (default canonical).",
    ),
    per_class: int = typer.Option(
        50, "--per-class", help="Test shapes per class (procedural Shapes test split)."
    ),
    scenes: int = typer.Option(100, "--scenes", min=1, help="Scene models: Rooms test scenes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the test rotations."),
    object_yaw: str | None = typer.Option(
        None,
        "--object-yaw",
        help="Scene models: test scenes with 'random' or 'aligned' (square to the room) object yaws; "
        "default: as the model was trained.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Shapes: accuracy or part mIoU under rotations. Rooms scene models: mAP@0.25/0.5 and/or mIoU per protocol."""
    import json

    from geo3d.registry import load_model
    from geo3d.train.scene_eval import SCENE_METERS

    try:
        net = load_model(model)
    except Exception as exc:  # unknown name, foreign file, ...: one clear line
        _fail(str(exc))
    if net.geo3d_checkpoint.get("arch") in SCENE_METERS:
        _evaluate_scenes(net, model, protocol, scenes, seed, as_json, object_yaw)
        return
    if object_yaw is not None:
        _fail("--object-yaw applies to Rooms scene models only")

    from geo3d.apps.evaluate import evaluate_on_shapes

    if protocol not in ("", "all"):
        _fail(f"--protocol must be 'all' or omitted, got {protocol!r}")
    try:
        results, difficulty = evaluate_on_shapes(
            net, ["z", "so3"] if protocol == "all" else [rotation], per_class, seed, protocol == "all"
        )
    except ValueError as exc:
        _fail(f"{model}: {exc}")
    if as_json:
        print(json.dumps(results))
        return
    table = Table(title=f"{model} on Shapes ({difficulty}) test ({per_class} per class)")
    table.add_column("train / test rotation")
    names = list(next(iter(results.values())))
    for name in names:
        table.add_column(name.replace("_", " "))
    for key, m in results.items():
        table.add_row(key, *(f"{m[name]:.4f}" for name in names))
    console.print(table)


def _evaluate_scenes(
    net, model: str, protocol: str, scenes: int, seed: int, as_json: bool, object_yaw: str | None = None
) -> None:
    """``geo3d evaluate`` for Rooms scene models: one row (JSON key) per protocol."""
    import json

    from geo3d.data.scene_protocols import PROTOCOLS
    from geo3d.train.scene_eval import evaluate_protocols

    protocols = list(PROTOCOLS) if protocol == "all" else [protocol or "canonical"]
    status = f"{model}: {scenes} Rooms test scenes x {len(protocols)} protocol(s)"
    try:
        with Console(stderr=True).status(status):  # stderr: stdout stays one JSON object
            results = evaluate_protocols(
                net, net.geo3d_checkpoint["arch"], protocols, scenes, seed, object_yaw=object_yaw
            )
    except ValueError as exc:
        _fail(f"{model}: {exc}")
    if as_json:
        print(json.dumps(results))
        return
    headline = [
        k
        for k in ("map@0.25", "map@0.5", "mar@0.25", "mar@0.5", "miou", "accuracy")
        if k in results[protocols[0]]
    ]
    table = Table(title=f"{model} on Rooms test ({scenes} scenes, seed {seed})")
    table.add_column("protocol")
    for name in headline:
        table.add_column(name)
    for key, m in results.items():
        table.add_row(key, *(f"{m[name]:.4f}" for name in headline))
    console.print(table)


@app.command()
def detect(
    scan: Path = typer.Argument(..., help="Point cloud: .ply, .xyz/.txt/.csv or .npy (metres, z up)."),
    model: str = typer.Option(..., "--model", "-m", help="Shipped name or checkpoint of a Rooms detector."),
    output: Path = typer.Option(Path("boxes.json"), "--output", "-o", help="JSON file of the boxes."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Also draw a PNG: top and side views, points coloured by class, boxes labelled."
    ),
    side_view: bool = typer.Option(True, "--side-view/--no-side-view", help="Add the side (x-z) view."),
    score_threshold: float | None = typer.Option(
        None,
        "--score-threshold",
        min=0.0,
        max=1.0,
        help="Keep boxes scoring above this (default: the one calibrated on validation scenes and kept "
        "in the checkpoint, else 0.5).",
    ),
    nms_iou: float = typer.Option(0.25, "--nms-iou", min=0.0, max=1.0, help="3D NMS IoU, per class."),
    keep_duplicates: bool = typer.Option(
        False,
        "--keep-duplicates",
        help="Skip the class-agnostic suppression of boxes whose centres are, in plan, within half an object size.",
    ),
    seed: int = typer.Option(
        0,
        "--seed",
        help="Seed of the point priorities: which points a large scan keeps and where APEN's random "
        "initial parts start. The same file and seed give the same boxes on any run.",
    ),
    device: str = typer.Option("cpu", help="cpu or cuda."),
) -> None:
    """Find objects in a scan; write {"boxes": [{"class", "score", "centre", "size", "yaw"}]}.

    The scan is brought to the point count the model was trained on (its
    config's num_points): a uniform subsample when larger, repeated points when
    smaller, chosen by per-point priorities that move with the scan (see
    geo3d.apps.detect), so the same file gives the same boxes and a rotated scan the
    rotated boxes. Boxes are in
    the scan's coordinates: centre and full size (dx, dy, dz) in metres, yaw
    (radians, counter-clockwise about +z, in [-pi, pi)) of the box's x axis.
    """

    from geo3d.apps.detect import (
        DUPLICATE_FRACTION,
        boxes_json,
        calibrated_score_threshold,
        fit_points,
        plot_detections,
        write_json,
    )
    from geo3d.apps.detect import detect as run_detector
    from geo3d.checkpoint import CheckpointError
    from geo3d.data.scan_files import ScanFileError, read_point_cloud
    from geo3d.registry import load_model, require_kind

    try:
        net = load_model(model, device=device)
    except (FileNotFoundError, CheckpointError) as exc:
        _fail(str(exc))
    config = net.geo3d_checkpoint["config"]
    try:
        require_kind(net, "detector")
    except CheckpointError as exc:
        _fail(str(exc))
    if "num_points" not in config:
        _fail(f"{model}: its config has no num_points (the scan size it was trained on)")
    try:
        points = read_point_cloud(scan)
    except ScanFileError as exc:
        _fail(str(exc))
    if config.get("use_normals") and getattr(points, "normal", None) is None:
        _fail(f"{scan}: {model} was trained with normals; the file has none (PLY nx ny nz, or 6 columns)")
    points, note = fit_points(points, int(config["num_points"]), seed)
    t0 = time.perf_counter()
    try:
        result = run_detector(
            net,
            points,
            nms_iou=nms_iou,
            score_threshold=score_threshold,
            duplicate_fraction=None if keep_duplicates else DUPLICATE_FRACTION,
            seed=seed,
        )
    except ValueError as exc:
        _fail(f"{scan}: {exc}")
    elapsed = time.perf_counter() - t0
    threshold = calibrated_score_threshold(net) if score_threshold is None else score_threshold
    class_names = list(config.get("class_names", []))
    payload = boxes_json(result, class_names)
    write_json(payload, output)
    err = Console(stderr=True)
    err.print(f"{scan}: {note}")
    err.print(
        f"{len(payload['boxes'])} boxes above {threshold} in {elapsed:.2f} s "
        f"({len(points.pos) / elapsed:,.0f} points/s); wrote {output}"
    )
    if plot is not None:
        try:
            plot_detections(points.pos, result, class_names, plot, side_view=side_view, title=scan.name)
        except ImportError as exc:
            _fail(str(exc))
        err.print(f"wrote {plot}")


@app.command()
def export(
    src: Path = typer.Argument(..., help="Training checkpoint (runs/.../best.pt)."),
    dst: Path = typer.Argument(..., help="Output file, e.g. geo3d/checkpoints/NAME.pt."),
    ema_decay: float | None = typer.Option(
        None, "--ema-decay", help="Export this shadow of train.ema_extra_decays (from a last.pt)."
    ),
) -> None:
    """Inference-only copy of a training checkpoint (EMA weights, config, metrics; no optimiser state)."""
    from geo3d.checkpoint import CheckpointError, export_checkpoint

    try:
        out = export_checkpoint(src, dst, ema_decay=ema_decay)
    except (FileNotFoundError, CheckpointError) as exc:
        _fail(str(exc))
    console.print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MB)")


@app.command()
def generate(
    model: str = typer.Option("eqgat-qm9", "--model", "-m", help="Shipped model name or checkpoint path."),
    n: int = typer.Option(100, "-n", help="Number of molecules."),
    output: Path = typer.Option(Path("molecules.sdf"), "--output", "-o", help="SDF file to write."),
    steps: int | None = typer.Option(None, help="Reverse diffusion steps (default: all, 500)."),
    sampler: str = typer.Option("ancestral", help="ancestral (DDPM) or fast (DDIM-style; use with --steps)."),
    num_atoms: int | None = typer.Option(
        None, help="Atoms per molecule (default: drawn from the training data)."
    ),
    batch_size: int = typer.Option(100, help="Molecules sampled together."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    png: Path | None = typer.Option(None, help="Also write a PNG grid of 2D depictions."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
    valence_aware: bool = typer.Option(
        False,
        "--valence-aware",
        help="Last step: the most probable bonds within RDKit's valence limits (an exact 0/1 program) "
        "instead of independent draws. Writes those molecules; the table shows the raw model's "
        "molecules of the same trajectories beside them (JSON: under 'raw').",
    ),
) -> None:
    """Sample 3D molecules (explicit H, bonds, charges) with EQGAT-diff, write SDF, print quality metrics."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from geo3d.apps.generate import sample_molecules, write_and_score
    from geo3d.checkpoint import CheckpointError
    from geo3d.metrics.library_logs import captured_library_logs
    from geo3d.metrics.tables import format_metrics_columns, format_metrics_table
    from geo3d.registry import load_model, require_kind

    if sampler not in ("ancestral", "fast"):
        _fail(f"--sampler must be 'ancestral' or 'fast', got {sampler!r}")
    try:
        net = load_model(model, device=device)
    except (FileNotFoundError, CheckpointError) as exc:
        _fail(str(exc))
    try:
        require_kind(net, "molecule-generator")
    except CheckpointError as exc:
        _fail(str(exc))
    # RDKit's "Explicit valence ..." lines (one per invalid molecule, while building, writing and
    # scoring) are counted into the table instead of burying it.
    with captured_library_logs() as log_lines:
        t0 = time.perf_counter()
        with Progress(
            TextColumn("sampling"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=as_json,
        ) as progress:
            bar = progress.add_task("steps", total=None)

            def tick(done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total)

            raw_mols: list = []
            try:
                mols = sample_molecules(
                    net, n, batch_size, steps, sampler, num_atoms, seed, tick, valence_aware, raw_mols
                )
            except ValueError as exc:
                _fail(str(exc))
        elapsed = time.perf_counter() - t0
        metrics, raw = write_and_score(net, mols, raw_mols, output, png)
    metrics["seconds"] = elapsed
    metrics["molecules_per_second"] = n / elapsed
    metrics["rdkit_log_lines"] = log_lines["rdkit"]
    metrics["posebusters_log_lines"] = log_lines["posebusters"]
    if as_json:
        print(json.dumps(metrics if raw is None else {**metrics, "raw": raw}))
        return
    if raw is None:
        console.print(format_metrics_table(metrics))
    else:
        console.print(format_metrics_columns({"raw": raw, "valence-aware (written)": metrics}))
    console.print(f"wrote {n} molecules to {output} ({elapsed:.1f} s, {n / elapsed:.2f} molecules/s)")


@app.command("evaluate-molecules")
def evaluate_molecules_command(
    path: Path = typer.Argument(..., help="SDF of generated molecules (explicit hydrogens, 3D)."),
    train_smiles: Path | None = typer.Option(
        None, "--train-smiles", help="Training SMILES, one per line (first column), for novelty."
    ),
    reference: Path | None = typer.Option(
        None, "--reference", help="SDF of reference molecules (e.g. the test set) for distribution distances."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
    posebusters: bool | None = typer.Option(
        None, "--posebusters/--no-posebusters", help="PoseBusters checks (default: when installed)."
    ),
    xtb: bool | None = typer.Option(
        None, "--xtb/--no-xtb", help="GFN2-xTB relaxation energy via tblite (default: when installed)."
    ),
    xtb_steps: int = typer.Option(100, help="Maximum BFGS steps of the xTB relaxation."),
    xtb_max: int | None = typer.Option(None, help="Relax only the first N valid molecules with xTB."),
) -> None:
    """Score the molecules of an SDF file: stability, validity, uniqueness, novelty, distances."""
    import json

    from rich.markup import escape

    from geo3d.data.sdf import read_generated_sdf
    from geo3d.data.smiles import canonical_smiles_set
    from geo3d.metrics.molecules import evaluate_molecules
    from geo3d.metrics.tables import format_metrics_table

    err = Console(stderr=True)
    notes: list[str] = []
    try:
        mols, unreadable = read_generated_sdf(path)
    except OSError as exc:
        _fail(f"{path}: cannot read ({exc.strerror or exc})")
    if not mols:
        _fail(f"{path}: no molecule records")
    for problem in unreadable:
        err.print(
            f"[yellow]warning:[/] {escape(str(problem))}; counted as invalid", highlight=False, soft_wrap=True
        )
    train = None
    if train_smiles is not None:
        try:
            lines = train_smiles.read_text(errors="replace").splitlines()
        except OSError as exc:
            _fail(f"{train_smiles}: cannot read ({exc.strerror or exc})")
        numbered = [(k, line.split()[0]) for k, line in enumerate(lines, 1) if line.strip()]
        bad: list[int] = []
        train = canonical_smiles_set([s for _, s in numbered], unparsable=bad)
        if bad:
            where = ", ".join(str(numbered[i][0]) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
            notes.append(
                f"{train_smiles}: {len(bad)} lines are not SMILES RDKit can parse (lines {where}); ignored"
            )
    ref = None
    if reference is not None:
        try:
            ref, ref_unreadable = read_generated_sdf(reference)
        except OSError as exc:
            _fail(f"{reference}: cannot read ({exc.strerror or exc})")
        notes += [f"{problem}; left out of the reference" for problem in ref_unreadable]
    try:
        metrics = evaluate_molecules(
            mols,
            train_smiles=train,
            reference=ref,
            posebusters=posebusters,
            xtb=xtb,
            xtb_steps=xtb_steps,
            xtb_max_molecules=xtb_max,
            progress=True,
            notes=notes,
        )
    except ImportError as exc:
        _fail(str(exc))
    if as_json:
        records = [{"record": p.record, "line": p.line, "message": p.message} for p in unreadable]
        typer.echo(
            json.dumps({"file": str(path), "metrics": metrics, "unreadable_records": records, "notes": notes})
        )
        return
    console.print(format_metrics_table(metrics, title=str(path)))
    for note in notes:
        console.print(f"[dim]note: {escape(note)}[/]", highlight=False)


if __name__ == "__main__":
    app()
