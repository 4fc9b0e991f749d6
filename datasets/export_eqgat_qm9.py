"""Export the shipped `eqgat-qm9` model from a training run.

    python datasets/export_eqgat_qm9.py runs/eqgat_qm9_cpu/best.pt

Writes geo3d/checkpoints/eqgat-qm9.pt (EMA weights, config with the QM9 priors,
metrics; no optimiser state) and eqgat-qm9.smiles.gz (the training split's
SMILES in the metrics' canonical form, for novelty). Needs the QM9 cache
(`pip install geo3d[qm9]`; built on first use).
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

from geo3d.checkpoint import export_checkpoint
from geo3d.data.qm9 import QM9
from geo3d.metrics.molecules import canonical_smiles_set

OUT = Path(__file__).resolve().parent.parent / "geo3d" / "checkpoints"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("checkpoint", type=Path)
    args = parser.parse_args()
    dst = export_checkpoint(args.checkpoint, OUT / "eqgat-qm9.pt")
    smiles = canonical_smiles_set(QM9("train").smiles)
    with gzip.open(OUT / "eqgat-qm9.smiles.gz", "wt", compresslevel=9) as fh:
        fh.write("\n".join(sorted(smiles)) + "\n")
    print(f"wrote {dst} ({dst.stat().st_size / 2**20:.2f} MB) and {len(smiles)} training SMILES")


if __name__ == "__main__":
    main()
