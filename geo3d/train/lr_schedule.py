"""The learning-rate schedule of ``optim``: linear warm-up, then constant or cosine decay."""

from __future__ import annotations

import math

from geo3d.train.config import ExperimentConfig


def learning_rate(cfg: ExperimentConfig, step: int, total_steps: int) -> float:
    """Linear warm-up, then constant or cosine decay to ``min_lr_ratio * lr`` at ``total_steps``."""
    o = cfg.optim
    lr = o.lr * min(1.0, (step + 1) / max(o.warmup_steps, 1))
    if o.schedule == "cosine" and step >= o.warmup_steps:
        progress = min(1.0, (step - o.warmup_steps) / max(total_steps - o.warmup_steps, 1))
        lr = o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    return lr
