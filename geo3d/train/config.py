"""Experiment configs (YAML), validated strictly: a typo is an error naming the file and field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimConfig(_Strict):
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(1e-12, ge=0)
    amsgrad: bool = True
    grad_clip: float = Field(10.0, gt=0)
    warmup_steps: int = Field(0, ge=0)
    # "cosine": after warm-up, decay to min_lr_ratio x lr at the last step of train.epochs.
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = Field(0.01, ge=0, le=1)


class TrainConfig(_Strict):
    epochs: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=1)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    # More EMA shadows, each updated every step beside the main one (about 1 ms per 1 M parameters)
    # and kept in last.pt: one run compares EMA decays (`geo3d export --ema-decay D`). Validation,
    # best.pt and the default export use ema_decay's.
    ema_extra_decays: list[Annotated[float, Field(ge=0, lt=1)]] = []
    seed: int = 42
    out_dir: str = "runs/experiment"
    checkpoint_every_steps: int = Field(200, ge=1)
    eval_every_epochs: int = Field(1, ge=1)
    eval_samples: int = Field(100, ge=1)
    eval_steps: int = Field(100, ge=1)
    log_every_steps: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)
    # A run stopped by max_steps / --max-minutes validates its last weights (and may update best.pt)
    # before it exits; otherwise the work since the last epoch's validation would never be scored.
    eval_on_stop: bool = True
    num_workers: int = Field(0, ge=0)
    # bfloat16: forward and loss under autocast (geo3d.train.precision); weights, gradients and
    # optimizer stay float32.
    precision: Literal["float32", "bfloat16"] = "float32"
    # torch.compile the model's hot part for training (a model's ``compile_for_training()``,
    # else the whole module; dynamic shapes). The state_dict keys do not change.
    compile: bool = False
    # Warm start: a shipped model name or checkpoint path whose architecture config and
    # weights (raw and EMA) seed a fresh run; ignored when out_dir already holds last.pt.
    # The training objective (the architecture's ``training_keys``, e.g. EQGAT-diff's loss
    # weights and timestep_beta) comes from this config, not the checkpoint. A checkpoint of another architecture seeds the part of this model that declares it
    # (``warm_start_parts``, e.g. apen -> apen_detector's backbone); the rest starts fresh.
    init_from: str | None = None


class _DataSection(_Strict):
    """Keys every data set takes: a cache folder and caps on the split sizes."""

    cache_dir: str | None = None
    limit_train: int | None = Field(None, ge=1)
    limit_val: int | None = Field(None, ge=1)


class QM9Data(_DataSection):
    dataset: Literal["qm9"] = "qm9"
    path: str | None = None  # folder with qm9pack's CSVs (default: the installed wheel)


class SDFData(_DataSection):
    dataset: Literal["sdf"]
    path: str | None = None  # an SDF file or a folder of them (required by the task)


class AtomisticData(_DataSection):
    """Labelled structures for a potential: extended XYZ, or the rMD17 ``.npz`` layout."""

    dataset: Literal["extxyz", "rmd17"]
    path: str | None = None  # the training file (relative paths from the working directory)
    val_path: str | None = None  # validation file (default: 10 % of path)
    energy_key: str = "energy"  # extxyz label keys (info / arrays / stored calculator results)
    forces_key: str = "forces"
    stress_key: str | None = "stress"


class ShapesData(_DataSection):
    """The procedural Shapes point clouds (geo3d/data/shapes.py)."""

    dataset: Literal["shapes"]
    per_class: int = Field(100, ge=1)  # instances per class
    num_points: int = Field(1024, ge=16)
    train_rotation: Literal["none", "z", "so3"] = "z"  # rotation augmentation of the training set
    # "hard" = stretched, partial shapes with distractors
    difficulty: Literal["standard", "hard"] = "standard"


class RoomsData(_DataSection):
    """The procedural Rooms scenes (geo3d/data/rooms.py); limit_train / limit_val cap the scene counts."""

    dataset: Literal["rooms"]
    num_points: int = Field(1024, ge=16)  # points a scene (the visible ones under occlusion)
    train_rotation: Literal["none", "z", "so3"] = "z"
    num_scenes: int = Field(200, ge=1)
    val_scenes: int = Field(40, ge=1)
    occlusion: bool = False  # single-view occlusion of every scene
    # fraction of the training and validation scenes with four walls (test scenes have none)
    walls: float = Field(0.0, ge=0, le=1)
    # "aligned" snaps every object's yaw to a multiple of 90 degrees (same rooms otherwise)
    object_yaw: Literal["random", "aligned"] = "random"


# The data section: one typed class per data set, picked by its ``dataset`` key (default: the task's), so a key
# of another data set (``per_class`` under qm9) is an error naming it, not a field silently ignored.
DATA_SECTIONS = (QM9Data, SDFData, AtomisticData, ShapesData, RoomsData)
DataConfig = Annotated[Union[DATA_SECTIONS], Field(discriminator="dataset")]  # noqa: UP007
# The ``dataset`` names, read off the sections (pydantic puts the one matched into an error's location).
DATA_TAGS = tuple(tag for cls in DATA_SECTIONS for tag in get_args(cls.model_fields["dataset"].annotation))


class LossConfig(_Strict):
    """Weights of the potential's loss: per-atom energy, force components and stress components (MSE)."""

    energy: float = Field(1.0, ge=0)
    forces: float = Field(10.0, ge=0)
    stress: float = Field(1.0, ge=0)


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: the one table (``TASKS``) every "which task / which model / which data" reads."""

    runner: str  # "module:Class" of the task object (imported on first use: geo3d.train.make_task)
    default_arch: str  # the architecture trained when the model section names none (``model.arch``)
    datasets: tuple[str, ...]  # the data sets it reads; the first is the default of ``data.dataset``
    model_keys: tuple[str, ...] = ()  # keys of the model section the task reads (loss weights)


TASKS: dict[str, TaskSpec] = {
    "eqgat_diff": TaskSpec("geo3d.train.molecule_task:MoleculeGenerationTask", "eqgat_diff", ("qm9", "sdf")),
    "potential": TaskSpec("geo3d.train.potential_task:PotentialTask", "potential", ("extxyz", "rmd17")),
    "pointcloud_classification": TaskSpec(
        "geo3d.train.pointcloud_task:PointCloudClassificationTask", "tinvnn", ("shapes",)
    ),
    "pointcloud_segmentation": TaskSpec(
        "geo3d.train.pointcloud_task:PointCloudSegmentationTask", "tinvnn_seg", ("shapes",)
    ),
    "detection": TaskSpec("geo3d.train.detection_task:DetectionTask", "votenet", ("rooms",)),
    "scene_segmentation": TaskSpec(
        "geo3d.train.scene_segmentation_task:SceneSegmentationTask", "apen", ("rooms",), ("seg_weight",)
    ),
    "scene_detection_segmentation": TaskSpec(
        "geo3d.train.scene_detection_task:SceneDetectionSegmentationTask",
        "apen_detector",
        ("rooms",),
        ("det_weight", "vote_weight", "seg_weight"),
    ),
}


class ExperimentConfig(_Strict):
    task: Literal[tuple(TASKS)]  # type: ignore[valid-type]  # the keys of TASKS
    name: str = "experiment"
    model: dict[str, Any] = Field(default_factory=dict)
    data: DataConfig = Field(default_factory=QM9Data)  # see _task_dataset_by_default
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    loss: LossConfig = Field(default_factory=LossConfig)

    @model_validator(mode="before")
    @classmethod
    def _task_dataset_by_default(cls, raw: Any) -> Any:
        """A data section without ``dataset`` (or none at all) is the first data set the task reads."""
        if isinstance(raw, dict) and raw.get("task") in TASKS:
            data = raw.get("data") or {}
            if isinstance(data, dict) and "dataset" not in data:
                raw = {**raw, "data": {**data, "dataset": TASKS[raw["task"]].datasets[0]}}
        return raw

    @model_validator(mode="after")
    def _task_reads_dataset(self) -> ExperimentConfig:
        allowed = TASKS[self.task].datasets
        if self.data.dataset not in allowed:
            raise ValueError(
                f"data.dataset: the {self.task} task reads {' or '.join(map(repr, allowed))}, "
                f"got {self.data.dataset!r}"
            )
        return self

    @property
    def arch(self) -> str:
        """The architecture this experiment trains: ``model.arch``, else the task's default."""
        return str(self.model.get("arch", TASKS[self.task].default_arch))


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read and validate a YAML experiment config; ``overrides`` like ``train.epochs=3``.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: invalid YAML, an unknown or mistyped field (named with its path).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(e["loc"], e["msg"]) for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from exc
    _check_model_section(cfg, path)
    return cfg


def _problem(loc: tuple, msg: str) -> str:
    """A pydantic error as ``field 'a.b': message``, with the YAML path: ``data.shapes.per_class`` is
    ``data.per_class`` (the middle part is the data set the section was read as, not a key of the file).
    Errors of the whole config (task against data set) name their field in the message."""
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] == "data" and parts[1] in DATA_TAGS:
        parts = [parts[0], *parts[2:]]
    msg = msg.removeprefix("Value error, ")
    return f"field '{'.'.join(parts)}': {msg}" if parts else msg


def _check_model_section(cfg: ExperimentConfig, path: Path) -> None:
    """The model section against its architecture's typed config, before any data is read."""
    from geo3d.checkpoint import CheckpointError
    from geo3d.models.config import config_problems
    from geo3d.registry import config_class

    try:
        schema = config_class(cfg.arch)
    except CheckpointError as exc:
        raise ConfigError(f"{path}: field 'model.arch': {exc}") from exc
    task_keys = ("arch", *TASKS[cfg.task].model_keys)
    section = {k: v for k, v in cfg.model.items() if k not in task_keys}
    problems = config_problems(schema, section)
    if problems:
        named = "; ".join(f"field 'model{'.' + key if key else ''}': {msg}" for key, msg in problems)
        raise ConfigError(f"{path}: {named} ({cfg.arch} config)")
