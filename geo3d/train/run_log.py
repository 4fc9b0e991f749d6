"""Training logs next to the checkpoints: CSV files always, TensorBoard events when it is installed.

``out_dir/train.csv`` gets one row per logged step (step, epoch, lr, loss, the
task's loss parts, gradient norm, seconds since the start), ``out_dir/val.csv``
one row per validation (epoch, step, every numeric metric); ``out_dir/tb/``
the same scalars for TensorBoard (``pip install geo3d[tensorboard]``). On resume
rows beyond the checkpoint's step are dropped first, so a run that crashed after
logging steps the checkpoint never saw does not log them twice.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any


class CsvLog:
    """Append-only CSV whose header grows when a new column first appears (the file is rewritten once)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] = []
        if path.is_file():
            with path.open(newline="") as fh:
                self.columns = next(csv.reader(fh), [])

    def truncate_after(self, step: int) -> None:
        """Drop rows whose ``step`` is above ``step`` (a resumed run repeats them)."""
        if not self.path.is_file() or "step" not in self.columns:
            return
        rows = self._rows()
        kept = [r for r in rows if r.get("step") in (None, "") or int(float(r["step"])) <= step]
        if len(kept) != len(rows):
            self._rewrite(kept)

    def append(self, row: dict[str, Any]) -> None:
        new = [k for k in row if k not in self.columns]
        if new and self.columns:
            rows = self._rows()
            self.columns += new
            self._rewrite(rows)
        elif new:
            self.columns = list(row)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("w", newline="") as fh:
                csv.writer(fh).writerow(self.columns)
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, self.columns).writerow({k: _cell(v) for k, v in row.items()})

    def _rows(self) -> list[dict[str, str]]:
        with self.path.open(newline="") as fh:
            return list(csv.DictReader(fh))

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, self.columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)  # atomic: a crash leaves the old or the new file


def _cell(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


class RunLog:
    """CSV (and TensorBoard) logs of one training run in ``out_dir``; only rank 0 should make one."""

    def __init__(self, out_dir: Path, resume_step: int = 0) -> None:
        self.train = CsvLog(out_dir / "train.csv")
        self.val = CsvLog(out_dir / "val.csv")
        for log in (self.train, self.val):
            log.truncate_after(resume_step)
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional: CSV only
            return
        # purge_step drops events the resumed run is about to write again
        self.writer = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step or None)

    def step(self, step: int, epoch: int, values: dict[str, float]) -> None:
        self.train.append({"step": step, "epoch": epoch, **values})
        self._scalars("train", step, values)

    def validation(self, step: int, epoch: int, metrics: dict[str, Any]) -> None:
        numeric = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and k not in ("step", "epoch")
        }
        self.val.append({"step": step, "epoch": epoch, **numeric})
        self._scalars("val", step, numeric)

    def _scalars(self, prefix: str, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
