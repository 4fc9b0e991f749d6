"""The model registry: architectures (config -> module) and the models shipped with geo3d (name -> checkpoint).

Every front door takes ``--model NAME|PATH``; :func:`load_model` resolves a
shipped name or a checkpoint path, rebuilds the architecture from the
checkpoint's config and loads the weights. :data:`ARCHITECTURES` is the one
list of architectures (``"module:builder"``, imported on first use so that
``import geo3d`` stays cheap); a new model adds a line there and, when it ships,
an entry in :data:`SHIPPED`. It sits above models/ and diffusion/ (it names
both) and below train/ and the front doors.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from geo3d.checkpoint import CheckpointError, load_checkpoint

if TYPE_CHECKING:  # the configs import pydantic; the registry is loaded by every front door
    from geo3d.models.config import ModelConfig

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

Builder = Callable[[dict[str, Any]], nn.Module]
# Architecture name (stored in every checkpoint) -> "module:Class" building it from a config; the class's
# ``Config`` (a geo3d.models.config.ModelConfig) declares the keys, types and defaults of that config.
ARCHITECTURES: dict[str, str | Builder] = {
    "eqgat_diff": "geo3d.diffusion.eqgat_diff:EQGATDiffusion",
    "potential": "geo3d.models.potential:InteratomicPotential",
    "tinvnn": "geo3d.models.tinvnn:TinvNN",
    "tinvnn_seg": "geo3d.models.tinvnn:TinvNNSegmentation",
    "dgcnn": "geo3d.models.dgcnn:DGCNN",
    "tinvnn_dgcnn": "geo3d.models.dgcnn:TinvNNDGCNN",
    "vn_dgcnn": "geo3d.models.vn_dgcnn:VNDGCNN",
    "parot": "geo3d.models.parot:PaRot",
    "parot_seg": "geo3d.models.parot:PaRotSegmentation",
    "votenet": "geo3d.models.votenet:VoteNet",
    "vn_detector": "geo3d.models.vn_detector:VNDetector",
    "apen": "geo3d.models.apen:APEN",
    "apen_seg": "geo3d.models.apen_part_seg:APENPartSegmentation",
    "apen_detector": "geo3d.models.apen_detector:APENDetector",
}


# What kind of model each architecture is: the one answer the front doors, tasks and the calculator
# ask ("can this checkpoint generate molecules / detect / ...?").
KINDS: dict[str, str] = {
    "eqgat_diff": "molecule-generator",
    "potential": "interatomic-potential",
    "tinvnn": "shape-classifier",
    "dgcnn": "shape-classifier",
    "tinvnn_dgcnn": "shape-classifier",
    "vn_dgcnn": "shape-classifier",
    "parot": "shape-classifier",
    "tinvnn_seg": "shape-segmenter",
    "parot_seg": "shape-segmenter",
    "apen_seg": "shape-segmenter",
    "apen": "scene-segmenter",
    "votenet": "detector",
    "vn_detector": "detector",
    "apen_detector": "detector",
}
assert set(KINDS) == set(ARCHITECTURES), "every architecture has a kind"


def architectures_of(kind: str) -> tuple[str, ...]:
    """The registered architectures of one kind (:data:`KINDS`), in table order."""
    return tuple(a for a, k in KINDS.items() if k == kind)


def require_kind(model: nn.Module, *kinds: str) -> str:
    """The architecture of a model from :func:`load_model`, if it is of one of ``kinds``.

    Raises:
        CheckpointError: naming the checkpoint, what it holds and what was wanted.
    """
    info = getattr(model, "geo3d_checkpoint", {})
    arch = info.get("arch")
    if KINDS.get(arch) not in kinds:
        holds = f"{_a(KINDS[arch])} ({arch!r})" if arch in KINDS else f"an unknown architecture {arch!r}"
        wanted = " or ".join(_a(k) for k in kinds)
        raise CheckpointError(f"{info.get('path', 'model')}: holds {holds}, not {wanted}")
    return arch


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def architecture(arch: str) -> Builder:
    """The builder of a registered architecture (imports its module on first use).

    Raises:
        CheckpointError: not a registered architecture.
    """
    if arch not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise CheckpointError(f"unknown architecture {arch!r} (this geo3d knows: {known})")
    entry = ARCHITECTURES[arch]
    if callable(entry):
        return entry
    module, name = entry.split(":")
    return getattr(importlib.import_module(module), name)


def config_class(arch: str) -> type[ModelConfig]:
    """The typed config of a registered architecture (its builder's ``Config``)."""
    return architecture(arch).Config


@dataclass(frozen=True)
class ShippedModel:
    """A checkpoint that ships inside the package (``geo3d/checkpoints/<file>``)."""

    name: str
    file: str
    task: str
    description: str

    @property
    def path(self) -> Path:
        return CHECKPOINT_DIR / self.file


SHIPPED: dict[str, ShippedModel] = {
    "eqgat-qm9": ShippedModel(
        "eqgat-qm9",
        "eqgat-qm9.pt",
        "molecule-generation",
        "EQGAT-diff on QM9 with explicit H, self-conditioned; ~22 CPU epochs, 35,508 steps of 64 molecules, the "
        "last 3,056 a cosine cycle with self-conditioning (configs/eqgat_diff_qm9_cpu.yaml)",
    ),
    "cu-emt": ShippedModel(
        "cu-emt",
        "cu-emt.pt",
        "interatomic-potential",
        "fcc Cu and Cu-Au, EMT data with stress (datasets/cu_emt, configs/potential_cu_emt.yaml + 60 warm-started epochs)",
    ),
    "tinvnn-shapes": ShippedModel(
        "tinvnn-shapes",
        "tinvnn-shapes.pt",
        "pointcloud-classification",
        "TinvNN (MDS-invariant PointNet) on the procedural Shapes set (configs/tinvnn_shapes.yaml)",
    ),
    "tinvnn-shapes-hard": ShippedModel(
        "tinvnn-shapes-hard",
        "tinvnn-shapes-hard.pt",
        "pointcloud-classification",
        "TinvNN on the hard Shapes variant (wide proportions, several arrangements a class, distractors, "
        "cuts; configs/tinvnn_shapes.yaml -s data.difficulty=hard)",
    ),
    "tinvnn-shapes-seg": ShippedModel(
        "tinvnn-shapes-seg",
        "tinvnn-shapes-seg.pt",
        "pointcloud-segmentation",
        "TinvNN part segmentation on the procedural Shapes set (configs/tinvnn_shapes_seg.yaml)",
    ),
    "parot-shapes": ShippedModel(
        "parot-shapes",
        "parot-shapes.pt",
        "pointcloud-classification",
        "PaRot (patch-wise rotation-invariant network) on the procedural Shapes set (configs/parot_shapes.yaml)",
    ),
    "parot-shapes-seg": ShippedModel(
        "parot-shapes-seg",
        "parot-shapes-seg.pt",
        "pointcloud-segmentation",
        "PaRot part segmentation (pose-aware propagation) on the procedural Shapes set "
        "(configs/parot_shapes_seg.yaml)",
    ),
    "apen-rooms-seg": ShippedModel(
        "apen-rooms-seg",
        "apen-rooms-seg.pt",
        "scene-segmentation",
        "APEN (piecewise-equivariant) semantic segmentation of procedural Rooms scenes, 2,048 points "
        "(configs/apen_rooms_seg.yaml, 20 epochs)",
    ),
    "apen-rooms": ShippedModel(
        "apen-rooms",
        "apen-rooms.pt",
        "3d-detection",
        "APEN features with segmentation and frame-relative detection heads on procedural Rooms scenes, "
        "4,096 points (configs/apen_rooms.yaml, backbone from apen-rooms-seg, 1,800 steps, then 1,000 with "
        "walls in half the rooms)",
    ),
    "votenet-rooms": ShippedModel(
        "votenet-rooms",
        "votenet-rooms.pt",
        "3d-detection",
        "VoteNet-style detector (PointNet++ backbone, not equivariant) on procedural Rooms scenes "
        "(configs/detect_rooms_votenet.yaml)",
    ),
    "votenet-rooms-aligned": ShippedModel(
        "votenet-rooms-aligned",
        "votenet-rooms-aligned.pt",
        "3d-detection",
        "The VoteNet baseline trained on Rooms scenes with furniture square to the room and no rotations "
        "(configs/detect_rooms_votenet_aligned.yaml): what per-object yaws cost a non-equivariant model",
    ),
    "xtb-organic": ShippedModel(
        "xtb-organic",
        "xtb-organic.pt",
        "interatomic-potential",
        "H/C/N/O/F molecules, GFN2-xTB MD data (datasets/xtb_organic, configs/potential_xtb_organic.yaml)",
    ),
}


def resolve_model(name_or_path: str | Path) -> Path:
    """Path of a shipped model name or an existing checkpoint file.

    Raises:
        FileNotFoundError: neither a shipped name nor a file; lists the shipped names.
    """
    key = str(name_or_path)
    if key in SHIPPED:
        path = SHIPPED[key].path
        if not path.is_file():
            raise FileNotFoundError(
                f"shipped model {key!r}: its checkpoint {path} is missing from the install"
            )
        return path
    path = Path(key).expanduser()
    if path.is_file():
        return path
    names = ", ".join(sorted(SHIPPED)) or "none yet"
    raise FileNotFoundError(f"{key!r} is neither a shipped model (shipped: {names}) nor a checkpoint file")


def build_model(arch: str, config: dict[str, Any]) -> nn.Module:
    """Instantiate a registered architecture from its config."""
    return architecture(arch)(config)


def load_model(
    name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> nn.Module:
    """A model ready for inference (eval mode) from a shipped name or a checkpoint path.

    The checkpoint's metadata is kept on the module as ``model.geo3d_checkpoint``
    (config, metrics, versions; no weights).

    Raises:
        FileNotFoundError: unknown name and no such file.
        CheckpointError: not a geo3d checkpoint, incompatible version, unknown
            architecture, or weights that do not fit the architecture.
    """
    path = resolve_model(name_or_path)
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["arch"], ckpt["config"])
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit architecture {ckpt['arch']!r}: {exc}") from exc
    model.geo3d_checkpoint = {k: v for k, v in ckpt.items() if k != "state_dict"}
    model.geo3d_checkpoint["path"] = str(path)
    model = model.to(device=device)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.eval()


def describe_shipped() -> list[dict[str, Any]]:
    """One row per shipped model: name, task, parameters, file size, headline metric."""
    rows = []
    for entry in SHIPPED.values():
        row: dict[str, Any] = {"name": entry.name, "task": entry.task, "description": entry.description}
        try:
            ckpt = load_checkpoint(entry.path)
        except (FileNotFoundError, CheckpointError) as exc:
            row.update(params=None, size_mb=None, headline=f"unreadable: {exc}")
        else:
            row["params"] = sum(t.numel() for t in ckpt["state_dict"].values())
            row["size_mb"] = entry.path.stat().st_size / 2**20
            metrics = ckpt["metrics"]
            key = metrics.get("headline")
            row["headline"] = f"{key}={metrics[key]:.4g}" if key in metrics else "-"
        rows.append(row)
    return rows
