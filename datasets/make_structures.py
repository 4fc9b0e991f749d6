"""Write the small structures embedded in geo3d (geo3d/resources/structures/).

Run: python datasets/make_structures.py. Deterministic (fixed seeds).
- cu_fcc_rattled.extxyz: 3x3x3 cubic fcc Cu (108 atoms), rattled by 0.05 A, periodic.
- quartz_alpha.extxyz: alpha-quartz SiO2 2x2x2 (72 atoms), hexagonal (non-orthogonal) cell, periodic.
- cu_slab.extxyz: fcc Cu(111) slab, 4 layers, periodic in x, y only, vacuum in z.
"""

from pathlib import Path

from ase.build import bulk, fcc111
from ase.io import write
from ase.spacegroup import crystal

OUT = Path(__file__).resolve().parent.parent / "geo3d" / "resources" / "structures"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    cu.rattle(stdev=0.05, seed=0)
    write(OUT / "cu_fcc_rattled.extxyz", cu)
    # alpha-quartz, space group P3_2 21 (154); lattice and basis from Levien et al. (1980),
    # z shifted by 2/3 to ASE's origin so that Si sits on Wyckoff 3a (Si4O tetrahedra, d(Si-O) = 1.605 A).
    quartz = crystal(
        ["Si", "O"],
        basis=[(0.4697, 0.0, 2.0 / 3.0), (0.4135, 0.2669, 0.1191 + 2.0 / 3.0)],
        spacegroup=154,
        cellpar=[4.916, 4.916, 5.405, 90, 90, 120],
    ).repeat((2, 2, 2))
    write(OUT / "quartz_alpha.extxyz", quartz)
    slab = fcc111("Cu", size=(4, 4, 4), a=3.61, vacuum=8.0)
    slab.pbc = (True, True, False)
    write(OUT / "cu_slab.extxyz", slab)


if __name__ == "__main__":
    main()
