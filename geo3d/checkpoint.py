"""The geo3d checkpoint file: weights plus the config, version and metrics that made them.

A checkpoint is a plain dict of tensors, strings, numbers, lists and dicts, so
it loads with ``torch.load(weights_only=True)`` and never runs code::

    {"format": "geo3d.checkpoint", "format_version": 1, "geo3d_version": "0.1.0",
     "arch": "eqgat_diff", "task": "molecule-generation", "config": {...},
     "metrics": {...}, "state_dict": {...}, "extra": {...}}

Files are written atomically (temporary file in the same folder, fsync,
``os.replace``): a crash mid-write never leaves a truncated checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from geo3d.files import atomic_write
from geo3d.version import __version__

FORMAT = "geo3d.checkpoint"
FORMAT_VERSION = 1  # bump when the layout changes; loaders refuse newer versions
REQUIRED_KEYS = ("format_version", "geo3d_version", "arch", "task", "config", "metrics", "state_dict")


class CheckpointError(ValueError):
    """A file that is not a usable geo3d checkpoint; the message names the file and the problem."""


def save_checkpoint(
    path: str | Path,
    *,
    arch: str,
    task: str,
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically and return its path.

    Args:
        arch: architecture name registered in :mod:`geo3d.registry`.
        task: what the model does, e.g. ``molecule-generation``, ``potential``.
        config: the full model config (plain, YAML-able values).
        state_dict: the model's weights.
        metrics: training/evaluation metrics; the key ``headline`` may name the
            one ``geo3d models`` shows.
        extra: anything else weights-only-safe (optimizer state, step, ...).
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "geo3d_version": __version__,
        "arch": str(arch),
        "task": str(task),
        "config": dict(config),
        "metrics": dict(metrics or {}),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "extra": dict(extra or {}),
    }
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def export_checkpoint(
    src: str | Path,
    dst: str | Path,
    metrics: Mapping[str, Any] | None = None,
    ema_decay: float | None = None,
) -> Path:
    """Inference-only copy of a training checkpoint: EMA weights, config and metrics, no optimiser state.

    ``ema_decay`` picks one of the run's ``train.ema_extra_decays`` shadows (kept in its ``last.pt``)
    instead of the main one; the validation metrics, which scored the main shadow, are then left out
    and ``metrics["ema_decay"]`` says which shadow this is.

    Raises:
        CheckpointError: ``ema_decay`` is not one of the decays ``src`` holds (the message lists them).
    """
    ckpt = load_checkpoint(src)
    state_dict, kept = ckpt["state_dict"], dict(ckpt["metrics"])
    if ema_decay is not None:
        ts = ckpt["extra"].get("train_state", {})
        shadows = (
            {e["decay"]: e["shadow"] for e in [ts["ema"], *ts.get("ema_extra", [])]} if "ema" in ts else {}
        )
        if ema_decay not in shadows:
            held = sorted(shadows) or "none (not a training checkpoint's last.pt)"
            raise CheckpointError(f"{src}: no EMA shadow of decay {ema_decay}; it holds {held}")
        if ema_decay != ts["ema"]["decay"]:
            state_dict = shadows[ema_decay]
            kept = {k: kept[k] for k in ("headline", "epoch", "step") if k in kept}
        kept["ema_decay"] = ema_decay
    return save_checkpoint(
        dst,
        arch=ckpt["arch"],
        task=ckpt["task"],
        config=ckpt["config"],
        state_dict=state_dict,
        metrics={**kept, **(metrics or {})},
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a geo3d checkpoint (any other pickle, a foreign
            torch file, a truncated file), a newer format version, or missing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    # Any failure of the loader is the file's fault: a plain pickle (torch's legacy reader then
    # raises a bare KeyError), a zip of something else, a truncated file, foreign classes.
    except Exception as exc:
        text = str(exc).strip()
        first_line = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a geo3d checkpoint (torch.load(weights_only=True) refused it: {first_line})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a geo3d checkpoint (no format={FORMAT!r}; found {found})")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} written by geo3d "
            f"{payload.get('geo3d_version')!r}; this geo3d ({__version__}) reads format versions "
            f"<= {FORMAT_VERSION}: upgrade geo3d"
        )
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: geo3d checkpoint is missing the fields {missing}")
    return payload
