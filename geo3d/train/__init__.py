"""Training: strict YAML configs, the shared loop (EMA, atomic checkpoints, resume, DDP), tasks."""

from geo3d.train.config import TASKS, ConfigError, ExperimentConfig, load_config


def make_task(cfg: ExperimentConfig):
    """The task object for ``cfg.task``."""
    import importlib

    module, _, cls = TASKS[cfg.task].runner.partition(":")
    return getattr(importlib.import_module(module), cls)(cfg)


__all__ = ["TASKS", "ConfigError", "ExperimentConfig", "load_config", "make_task"]
