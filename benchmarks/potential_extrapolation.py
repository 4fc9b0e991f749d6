"""Does the training-domain signal rank the bad cases above the good ones? (cu-emt against ASE's EMT)

For the shipped ``cu-emt`` potential, every structure of its test split
(``datasets/cu_emt/test.xyz``, in domain) and a set of named in-domain and
out-of-domain structures are scored against EMT (the potential's reference):
energy error per atom, force MAE, and the structure's extrapolation
(:mod:`geo3d.models.potential_domain`; 1 = the edge of the training set, the
calculator warns above 2). The table in ``benchmarks/RESULTS.md`` comes from
this script, with the Spearman rank correlation between extrapolation and
energy error over all structures.

``--refit`` first refits the training domain of the shipped potentials on their
training sets (``cu-emt``: ``datasets/cu_emt/train.xyz``, ``xtb-organic``:
``datasets/xtb_organic/train.xyz``) and rewrites their checkpoints with it
(weights unchanged).

Usage: python benchmarks/potential_extrapolation.py [--refit] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.build import bulk, fcc100, fcc110, fcc111
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron, Octahedron
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from report import write_section  # noqa: E402

from geo3d.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from geo3d.data.atomistic import read_labelled_structures, read_structures  # noqa: E402
from geo3d.graph.neighbors import with_radius_graph  # noqa: E402
from geo3d.models.potential_domain import THRESHOLD, fit_model_domain  # noqa: E402
from geo3d.registry import SHIPPED, load_model  # noqa: E402

TRAINING_SETS = {"cu-emt": "datasets/cu_emt/train.xyz", "xtb-organic": "datasets/xtb_organic/train.xyz"}
A_CU = 3.61


def refit(name: str) -> str:
    """Refit ``name``'s training domain on its training set and rewrite the shipped checkpoint."""
    path = SHIPPED[name].path
    ckpt = load_checkpoint(path)
    model = load_model(str(path), dtype=torch.float64)
    frames = [
        with_radius_graph(f, model.r_max)
        for f in read_labelled_structures(ROOT / TRAINING_SETS[name], "energy", "forces", "stress")
    ]
    domain = fit_model_domain(model, frames)
    save_checkpoint(
        path,
        arch=ckpt["arch"],
        task=ckpt["task"],
        config={**ckpt["config"], "domain": domain},
        state_dict=ckpt["state_dict"],
        metrics=ckpt["metrics"],
        extra=ckpt["extra"],
    )
    reps = [len(r) for r in domain["feature_representatives"]]
    return f"{name}: domain refitted on {domain['num_atoms']} atoms of {len(frames)} frames, representatives {reps}"


def named_cases(seed: int = 0) -> dict[str, tuple[str, Atoms]]:
    """(domain the issue assigns, structure) for the named cases."""
    cu = bulk("Cu", "fcc", a=A_CU, cubic=True)
    vacancy = cu.repeat(3)
    del vacancy[0]
    md = cu.repeat(3)
    md.calc = EMT()
    MaxwellBoltzmannDistribution(md, temperature_K=900, rng=np.random.default_rng(seed))
    Langevin(md, 2 * units.fs, temperature_K=900, friction=0.02, rng=np.random.default_rng(seed + 1)).run(200)
    hot = Atoms(md.numbers, md.positions, cell=md.cell, pbc=True)
    cu13 = Icosahedron("Cu", 2, latticeconstant=A_CU)
    cu13.center(vacuum=8.0)
    cu38 = Octahedron("Cu", 4, cutoff=1, latticeconstant=A_CU)
    cu38.center(vacuum=8.0)
    strained = cu.repeat(3)
    strained.set_cell(strained.cell * 0.9, scale_atoms=True)
    return {
        "Cu vacancy (3x3x3)": ("in", vacancy),
        "Cu(111) slab": ("in", fcc111("Cu", (3, 3, 4), vacuum=10.0, a=A_CU)),
        "Cu(100) slab": ("in", fcc100("Cu", (3, 3, 4), vacuum=10.0, a=A_CU)),
        "Cu 900 K snapshot": ("in", hot),
        "Cu(110) slab": ("out", fcc110("Cu", (3, 3, 6), vacuum=10.0, a=A_CU)),
        "Cu13 icosahedron": ("out", cu13),
        "Cu38 truncated octahedron": ("out", cu38),
        "Cu2 dimer (2.22 Å)": ("out", Atoms("Cu2", positions=[[0, 0, 0], [2.22, 0, 0]])),
        "Cu fcc, -10% linear strain": ("out", strained),
    }


def score(calc, atoms: Atoms) -> tuple[float, float, float]:
    """(energy error meV/atom, force MAE meV/Å, extrapolation) of ``calc`` against EMT."""
    ref = atoms.copy()
    ref.calc = EMT()
    e_ref, f_ref = ref.get_potential_energy(), ref.get_forces()
    a = atoms.copy()
    a.calc = calc
    e, f = a.get_potential_energy(), a.get_forces()
    return (
        abs(e - e_ref) / len(atoms) * 1000,
        float(np.abs(f - f_ref).mean() * 1000),
        float(calc.results["extrapolation"]),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refit", action="store_true", help="refit and rewrite the shipped potentials' domains")
    ap.add_argument("--out", type=Path, help="write the section into this markdown page (its markers)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lines = []
    if args.refit:
        lines += [refit(name) for name in TRAINING_SETS] + [""]

    import warnings

    from geo3d.calculators import ExtrapolationWarning, Geo3DCalculator

    warnings.simplefilter("ignore", ExtrapolationWarning)
    calc = Geo3DCalculator("cu-emt")
    rows, errors, extrapolations, labels = [], [], [], []
    test = read_structures(ROOT / "datasets/cu_emt/test.xyz")
    test_scores = [score(calc, a) for a in test]
    for de, _, ex in test_scores:
        errors.append(de)
        extrapolations.append(ex)
        labels.append("in")
    t = np.array(test_scores)
    rows.append(
        f"| test split, {len(test)} frames (median / max) | in | {np.median(t[:, 0]):.2f} / {t[:, 0].max():.2f} | "
        f"{np.median(t[:, 1]):.1f} / {t[:, 1].max():.1f} | {np.median(t[:, 2]):.2f} / {t[:, 2].max():.2f} | "
        f"{int((t[:, 2] > THRESHOLD).sum())} of {len(test)} |"
    )
    for name, (where, atoms) in named_cases().items():
        de, df, ex = score(calc, atoms)
        errors.append(de)
        extrapolations.append(ex)
        labels.append(where)
        rows.append(
            f"| {name} | {where} | {de:.2f} | {df:.1f} | {ex:.2f} | {'yes' if ex > THRESHOLD else 'no'} |"
        )
    rho = spearmanr(extrapolations, errors).statistic
    k = len(test)
    rho_named = spearmanr(extrapolations[k:], errors[k:]).statistic
    ex_arr, lab = np.array(extrapolations), np.array(labels)
    worst_in, best_out = ex_arr[lab == "in"].max(), ex_arr[lab == "out"].min()
    header = [
        f"cu-emt against EMT; extrapolation = max over atoms of max(feature, distance, coordination) ratios; "
        f"warning threshold {THRESHOLD}. {platform.machine()}, torch {torch.__version__}, "
        f"{datetime.date.today().isoformat()}",
        "",
        "| structures | domain | energy error (meV/atom) | force MAE (meV/Å) | extrapolation | flagged |",
        "|---|---|---|---|---|---|",
    ]
    footer = [
        "",
        f"Spearman rank correlation of extrapolation with energy error over all {len(errors)} structures: "
        f"{rho:.2f} (the test frames' sub-meV errors and extrapolations near 1 are mostly noise); over the "
        f"{len(errors) - k} named structures: {rho_named:.2f}. Largest in-domain extrapolation {worst_in:.2f}, "
        f"smallest out-of-domain {best_out:.2f}.",
    ]
    text = "\n".join(lines + header + rows + footer)
    print(text)
    if args.out:
        write_section(args.out, text, "potential-extrapolation")


if __name__ == "__main__":
    main()
