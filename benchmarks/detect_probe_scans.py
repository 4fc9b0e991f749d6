"""`geo3d detect` on probe scans it has not seen: deterministic? equivariant? one box per object?

For each shipped Rooms detector and each scan of ``geo3d.data.probe_scans.PROBE_SET``
(built without the Rooms generator): the boxes of two runs on the same scan
(identical?), the boxes after rotating the scan by 0.6 rad about z and moving it
by (1, -2, 0) m (median distance from each rotated first-run centre to the
nearest second-run centre; median heading change modulo a half turn of those
pairs), the number of boxes above the checkpoint's score threshold against the
number of objects, and the class-agnostic recall at IoU 0.25. The shipped
``apen-rooms`` tests with one proposal per APEN part; the ``proposals=fps`` row is
the same weights with 256 FPS proposals (what it shipped with before).

``--calibrate`` first fits each detector's score threshold (highest F1 at IoU
0.25 on 60 Rooms validation scenes, moved as the model was trained, through the
same pipeline as ``geo3d detect``) and writes it into the shipped checkpoint's
config (weights unchanged).

``--further`` adds one row per detector over the 12 ``FURTHER_SCANS`` (for choosing
settings on scans other than the probe set): mean recall, box counts within one.

``--candidate NAME=PATH`` measures (and calibrates into) a trained checkpoint in
place of shipped NAME; ``--only NAME`` limits the run to one detector's rows.

Usage: python benchmarks/detect_probe_scans.py [--calibrate] [--only NAME] [--candidate NAME=PATH] [--further] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from report import write_section  # noqa: E402
from torch_geometric.data import Data  # noqa: E402

from geo3d.apps.detect import calibrate_score_threshold, calibrated_score_threshold, detect, fit_points  # noqa: E402
from geo3d.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from geo3d.data.probe_scans import FURTHER_SCANS, PROBE_SET, make_probe_scan  # noqa: E402
from geo3d.data.rooms import Rooms  # noqa: E402
from geo3d.data.scene_protocols import apply_protocol  # noqa: E402
from geo3d.ops.boxes import box3d_iou_matrix  # noqa: E402
from geo3d.registry import SHIPPED, load_model  # noqa: E402

DETECTORS = ("apen-rooms", "votenet-rooms", "votenet-rooms-aligned")
# Rows of the table: a shipped detector and config overrides (an override's threshold is calibrated here).
VARIANTS: tuple[tuple[str, dict], ...] = (
    ("apen-rooms", {}),
    ("apen-rooms", {"proposals": "fps"}),
    ("votenet-rooms", {}),
    ("votenet-rooms-aligned", {}),
)
# Config changes --calibrate makes with the threshold (apen-rooms: one proposal per APEN part, which
# found 0.45 of the objects of FURTHER_SCANS against FPS proposals' 0.36, box counts within one on 10
# of 12 against 5; RESULTS.md).
SHIPPED_OVERRIDES: dict[str, dict] = {"apen-rooms": {"proposals": "parts"}}
ANGLE, SHIFT = 0.6, (1.0, -2.0, 0.0)


def validation_scenes(cfg: dict) -> tuple[list, str]:
    """60 Rooms validation scenes as a detector with checkpoint config ``cfg`` was trained on (20 gave
    a flat, noisy F1 curve: thresholds 0.4 and 0.6 within 0.03 of each other)."""
    val = Rooms(
        "val",
        num_scenes=60,
        seed=0,
        num_points=int(cfg["num_points"]),
        occlusion=bool(cfg.get("occlusion", False)),
        object_yaw=str(cfg.get("object_yaw") or "random"),
    )
    protocol = "scene_z" if cfg.get("train_rotation") == "z" else "canonical"
    gen = torch.Generator().manual_seed(0)
    return [apply_protocol(d, protocol, gen) for d in val], protocol


def calibrate(name: str, path: Path) -> str:
    """Fit detector ``name``'s score threshold on Rooms validation scenes and rewrite its checkpoint ``path``."""
    ckpt = load_checkpoint(path)
    model = load_model(path)
    overrides = SHIPPED_OVERRIDES.get(name, {})
    model.config.update(overrides)
    cfg = {**ckpt["config"], **overrides}
    scenes, protocol = validation_scenes(cfg)
    thr, ts, f1 = calibrate_score_threshold(model, scenes)
    thr = round(thr, 2)
    save_checkpoint(
        path,
        arch=ckpt["arch"],
        task=ckpt["task"],
        config={**cfg, "score_threshold": thr},  # weights unchanged
        state_dict=ckpt["state_dict"],
        metrics=ckpt["metrics"],
        extra=ckpt["extra"],
    )
    at = {round(float(t), 2): float(f) for t, f in zip(ts, f1, strict=True)}
    changed = "".join(f", {k}={v}" for k, v in overrides.items())
    return f"{name}: score_threshold {thr} (F1 {at[thr]:.3f}; at 0.5: {at[0.5]:.3f}), {protocol} val scenes{changed}"


def _rot(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_shift(first: torch.Tensor, second: torch.Tensor) -> tuple[float, float]:
    """Median centre distance (m) and heading change (degrees, modulo a half turn) from each of
    ``first``'s boxes moved by the test motion to the nearest of ``second``'s."""
    if len(first) == 0 or len(second) == 0:
        return (0.0, 0.0) if len(first) == len(second) else (math.inf, math.inf)
    moved = first[:, :3] @ _rot(ANGLE).T + torch.tensor(SHIFT)
    d = ((moved[:, None] - second[None, :, :3]) ** 2).sum(-1).sqrt()
    dist, j = d.min(1)
    turn = torch.remainder(second[j, 6] - first[:, 6] - ANGLE + math.pi / 2, math.pi) - math.pi / 2
    return float(dist.median()), float(turn.abs().median()) * 180 / math.pi


def recall(boxes: torch.Tensor, gt: torch.Tensor, iou: float = 0.25) -> float:
    """Class-agnostic: the fraction of ground-truth boxes some detection overlaps by IoU >= ``iou``."""
    if len(boxes) == 0:
        return 0.0
    return float((box3d_iou_matrix(gt.double(), boxes.double()) >= iou).any(1).double().mean())


def prepared(name: str, path: Path, overrides: dict) -> tuple[torch.nn.Module, float, str, int]:
    """The detector at ``path`` with ``overrides``, its threshold (recalibrated when overridden), its
    row label and its point count."""
    model = load_model(path)
    num_points = int(model.geo3d_checkpoint["config"]["num_points"])
    thr = calibrated_score_threshold(model)
    if overrides:
        model.config.update(overrides)
        thr = round(
            calibrate_score_threshold(model, validation_scenes(model.geo3d_checkpoint["config"])[0])[0], 2
        )
        name += " " + ", ".join(f"{k}={v}" for k, v in overrides.items())
    return model, thr, name, num_points


def further_row(name: str, path: Path, overrides: dict) -> str:
    """One row over ``FURTHER_SCANS``: mean class-agnostic recall@0.25, scans whose box count is
    within one of their objects, and the box counts scan by scan."""
    model, thr, name, num_points = prepared(name, path, overrides)
    recalls, counts, within = [], [], 0
    for kwargs in FURTHER_SCANS.values():
        scan = make_probe_scan(**kwargs)
        boxes = detect(model, fit_points(Data(pos=scan.pos), num_points)[0], score_threshold=thr)["boxes"]
        recalls.append(recall(boxes, scan.boxes))
        counts.append(f"{len(boxes)}/{len(scan.boxes)}")
        within += abs(len(boxes) - len(scan.boxes)) <= 1
    walls = [k for k, v in enumerate(FURTHER_SCANS.values()) if v["walls"]]
    wall_recall = sum(recalls[k] for k in walls) / len(walls)
    return (
        f"| `{name}` | {sum(recalls) / len(recalls):.2f} | {wall_recall:.2f} | {within} / {len(counts)} | "
        f"{' '.join(counts)} | {thr} |"
    )


def probe_rows(name: str, path: Path, overrides: dict) -> list[str]:
    """Table rows of the detector at ``path``, labelled ``name`` (plus its ``overrides``)."""
    model, thr, name, num_points = prepared(name, path, overrides)
    rows = []
    for scan_name, kwargs in PROBE_SET.items():
        scan = make_probe_scan(**kwargs)
        t0 = time.perf_counter()
        runs = [
            detect(model, fit_points(Data(pos=scan.pos), num_points)[0], score_threshold=thr)
            for _ in range(2)
        ]
        elapsed = (time.perf_counter() - t0) / 2
        moved = scan.pos @ _rot(ANGLE).T + torch.tensor(SHIFT)
        turned = detect(model, fit_points(Data(pos=moved), num_points)[0], score_threshold=thr)
        same = all(torch.equal(runs[0][k], runs[1][k]) for k in ("boxes", "scores", "labels"))
        shift, heading = rotation_shift(runs[0]["boxes"], turned["boxes"])
        rows.append(
            f"| `{name}` | {scan_name} ({len(scan.pos):,} pts) | {'yes' if same else 'no'} | {shift:.3g} | "
            f"{heading:.3g} | {len(runs[0]['boxes'])} / {len(turned['boxes'])} for {len(scan.boxes)} | "
            f"{recall(runs[0]['boxes'], scan.boxes):.2f} | {thr} | {elapsed:.2f} |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibrate", action="store_true", help="refit and write the shipped score thresholds")
    ap.add_argument("--out", type=Path, help="write the section into this markdown page (its markers)")
    ap.add_argument("--only", choices=DETECTORS, help="only this detector's rows")
    ap.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="measure (and with --calibrate, write the threshold into) PATH in place of shipped NAME",
    )
    ap.add_argument(
        "--further", action="store_true", help="also one summary row per detector over the 12 FURTHER_SCANS"
    )
    args = ap.parse_args()
    paths = {name: SHIPPED[name].path for name in DETECTORS}
    for item in args.candidate:
        name, _, path = item.partition("=")
        if name not in paths or not Path(path).is_file():
            ap.error(f"--candidate {item!r}: want NAME=PATH with NAME one of {DETECTORS} and PATH a file")
        paths[name] = Path(path)
    names = [args.only] if args.only else list(DETECTORS)
    torch.set_num_threads(1)
    lines = [
        f"`python benchmarks/detect_probe_scans.py{' --calibrate' if args.calibrate else ''}`, "
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}",
        "",
    ]
    if args.calibrate:
        lines += [calibrate(name, paths[name]) for name in names] + [""]
    lines += [
        "| model | scan | same boxes twice | centre shift after rotation (m, median) | heading shift (deg) "
        "| boxes >= thr (scan / rotated) | recall@0.25 | thr | s/scan |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    # (label, checkpoint, overrides) of each row to measure
    rows = [
        (
            name if paths[name] == SHIPPED[name].path else f"{name} ({paths[name].name})",
            paths[name],
            overrides,
        )
        for name, overrides in VARIANTS
        if name in names
    ]
    for row in rows:
        lines += probe_rows(*row)
    if args.further:
        lines += [
            "",
            f"Over the {len(FURTHER_SCANS)} further probe scans (`FURTHER_SCANS`, seeds 100-111):",
            "",
            "| model | recall@0.25 | recall@0.25, scans with walls | box count within one | boxes / objects "
            "per scan | thr |",
            "|---|---|---|---|---|---|",
        ]
        lines += [further_row(*row) for row in rows]
    report = "\n".join(lines)
    print(report)
    if args.out:
        write_section(args.out, report, "detect-probe-scans")


if __name__ == "__main__":
    main()
