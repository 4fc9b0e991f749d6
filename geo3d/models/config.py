"""Typed model configs: one pydantic class per architecture, the one place its keys are defined.

A model section of an experiment YAML and the ``config`` stored in a checkpoint are plain
dicts (weights-only safe). Each architecture declares its keys, types, defaults and ranges
in a :class:`ModelConfig` subclass; its ``resolve`` classmethod turns a dict into the
complete, checked dict the network reads (``self.config[...]``), and
:func:`config_problems` gives the same checks as ``(key, message)`` pairs, so that
:func:`geo3d.train.config.load_config` can name the file and the ``model.<key>`` field
before anything is built. Unknown keys (typos) are refused, never ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator
from typing_extensions import Self

# Counts and widths: an integer (not a bool, not 2.0) of at least 1 / 0.
PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]


# Keys the shape tasks record in a checkpoint's config (the training data's options), unused by the network.
SHAPE_METADATA = ("train_rotation", "num_points", "arch", "difficulty")

# Keys the training task records in a frame-relative Rooms detector's checkpoint (apen_detector,
# vn_detector) that the network does not use; score_threshold is calibrated on validation scenes
# (geo3d.apps.detect.calibrate_score_threshold) and read by geo3d detect.
DETECTOR_METADATA = (
    "arch",
    "num_points",
    "train_rotation",
    "class_names",
    "occlusion",
    "object_yaw",
    "score_threshold",
)


class ModelConfigError(ValueError):
    """A model config that cannot build its architecture; the message names the model and the key."""


class ModelConfig(BaseModel):
    """Base of the per-architecture configs: unknown keys are errors, defaults are validated too.

    ``arch`` names the architecture in messages; ``metadata`` lists keys the training task
    records in a checkpoint's config (training data options, the calibrated score threshold)
    that the network accepts and ignores; ``training_keys`` lists keys that shape the training
    objective (loss weights, how training times are drawn, noise schedules), not the weights' shapes,
    so a warm start (``train.init_from``) takes them from its own config, not the checkpoint's.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())

    arch: ClassVar[str] = "model"
    metadata: ClassVar[tuple[str, ...]] = ()
    training_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def resolve(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """The complete config (defaults filled in, metadata keys dropped) as a plain dict.

        Raises:
            ModelConfigError: ``"<arch> config: ..."`` naming every bad key.
        """
        problems = config_problems(cls, config)
        if problems:
            raise ModelConfigError(f"{cls.arch} config: " + "; ".join(_joined(problems)))
        return cls.model_validate(_own_keys(cls, config)).model_dump()


def config_problems(cls: type[ModelConfig], config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(key path, message)`` for everything wrong with ``config`` as a ``cls``; empty when it is fine."""
    if not isinstance(config, Mapping):
        return [("", f"must be a mapping of keys, got {type(config).__name__}")]
    try:
        cls.model_validate(_own_keys(cls, config))
    except ValidationError as exc:
        return _describe(exc, cls)
    return []


def _own_keys(cls: type[ModelConfig], config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in cls.metadata}


def _joined(problems: list[tuple[str, str]]) -> list[str]:
    return [f"'{key}' {msg}" if key else msg for key, msg in problems]


def _describe(exc: ValidationError, cls: type[ModelConfig]) -> list[tuple[str, str]]:
    """pydantic's errors as short messages in geo3d's wording ("'k' must be an integer >= 1, got 0")."""
    unknown: dict[str, list[str]] = {}
    out: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        kind, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
        if kind == "extra_forbidden":
            unknown.setdefault(".".join(loc[:-1]), []).append(loc[-1])
            continue
        if loc[-1:] == ["[key]"]:  # a dict key (e.g. a modality name) that is not allowed
            loc, kind = loc[:-2], f"key_{kind}"
        key = ".".join(loc)
        if kind == "key_literal_error":
            msg = f"keys must be one of {ctx['expected']}, got {got!r}"
        elif kind == "literal_error":
            msg = f"must be one of {ctx['expected']}, got {got!r}"
        elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
            bound = next(iter(ctx.values()))
            what = "an integer" if isinstance(got, int) and not isinstance(bound, float) else "a number"
            msg = f"must be {what} {op[kind]} {bound}, got {got!r}"
        elif kind.startswith("int"):
            msg = f"must be an integer, got {got!r}"
        elif kind == "missing":
            msg = "is required"
        elif kind == "value_error":
            msg = str(ctx.get("error", err["msg"]))
        else:
            msg = f"{err['msg'][0].lower()}{err['msg'][1:]}, got {got!r}"
        out.append((key, msg))
    for where, keys in unknown.items():
        known = sorted(_fields_at(cls, where))
        prefix = f"'{where}': " if where else ""
        out.insert(0, ("", f"{prefix}unknown keys {sorted(keys)} (known: {known})"))
    return out


def _fields_at(cls: type[BaseModel], where: str) -> list[str]:
    """Field names of the (nested) model at a dotted location, for the 'known:' list."""
    for part in [p for p in where.split(".") if p]:
        annotation = cls.model_fields[part].annotation if part in cls.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        cls = annotation
    return list(cls.model_fields)


class DetectionHeadConfig(ModelConfig):
    """The keys every vote-and-group detection head reads (:class:`geo3d.nn.heads.detection.VoteHeadSpec`)."""

    num_classes: PositiveInt = 8
    # [num_classes, 3]; None: unit boxes (the training task fills in the training set's means)
    mean_sizes: list[list[float]] | None = None
    num_heading_bins: PositiveInt = 12
    num_proposals: PositiveInt = 64
    # proposals in eval mode (None: num_proposals); the weights do not depend on it
    eval_proposals: PositiveInt | None = None
    vote_radius: float = Field(0.3, gt=0)
    vote_k: PositiveInt = 32
    head_width: PositiveInt = 128

    @model_validator(mode="after")
    def _unit_boxes_by_default(self) -> Self:
        if self.mean_sizes is None:
            self.mean_sizes = [[1.0, 1.0, 1.0] for _ in range(self.num_classes)]
        if len(self.mean_sizes) != self.num_classes or any(
            len(row) != 3 or not all(s > 0 for s in row) for row in self.mean_sizes
        ):
            raise ValueError(
                f"'mean_sizes' must be [num_classes={self.num_classes}, 3] and > 0, "
                f"got {len(self.mean_sizes)} rows"
            )
        return self


class FrameDetectionHeadConfig(DetectionHeadConfig):
    """A frame-relative Rooms detector's head keys (:class:`~geo3d.nn.heads.frame_detection.FrameVoteHead`)."""

    metadata: ClassVar[tuple[str, ...]] = DETECTOR_METADATA

    # per-proposal heading frame: "pca" (the grouped seeds' principal axis) or "learned" (seed axes)
    heading_frame: Literal["learned", "pca"] = "pca"
