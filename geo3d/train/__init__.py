"""Training: strict YAML configs, the shared loop (EMA, atomic checkpoints, resume, DDP), tasks."""

from geo3d.train.config import ConfigError, ExperimentConfig, load_config

TASKS = {
    "eqgat_diff": "geo3d.train.molecule_task:MoleculeGenerationTask",
    "potential": "geo3d.train.potential_task:PotentialTask",
    "pointcloud_classification": "geo3d.train.pointcloud_task:PointCloudClassificationTask",
    "pointcloud_segmentation": "geo3d.train.pointcloud_task:PointCloudSegmentationTask",
    "detection": "geo3d.train.detection_task:DetectionTask",
    "scene_segmentation": "geo3d.train.scene_segmentation_task:SceneSegmentationTask",
    "scene_detection_segmentation": "geo3d.train.scene_detection_task:SceneDetectionSegmentationTask",
}


def make_task(cfg: ExperimentConfig):
    """The task object for ``cfg.task``."""
    import importlib

    module, _, cls = TASKS[cfg.task].partition(":")
    return getattr(importlib.import_module(module), cls)(cfg)


__all__ = ["TASKS", "ConfigError", "ExperimentConfig", "load_config", "make_task"]
