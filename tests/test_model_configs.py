"""Typed model configs (geo3d.models.config): one class per architecture, errors naming the key."""

from __future__ import annotations

import pytest

from geo3d.checkpoint import load_checkpoint
from geo3d.models.config import ModelConfig, ModelConfigError, config_problems
from geo3d.registry import ARCHITECTURES, SHIPPED, config_class
from geo3d.train.config import TASKS, ConfigError, load_config


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_has_a_typed_config_whose_defaults_are_a_fixed_point(arch):
    schema = config_class(arch)
    assert issubclass(schema, ModelConfig) and schema.arch == arch
    resolved = schema.resolve({})
    assert schema.resolve(resolved) == resolved  # a stored, complete config rebuilds the same model
    with pytest.raises(ModelConfigError, match=rf"^{arch} config: unknown keys \['no_such_key'\]"):
        schema.resolve({"no_such_key": 1})


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_checkpoint_config_passes_its_architecture_check(name):
    ckpt = load_checkpoint(SHIPPED[name].path)
    assert config_problems(config_class(ckpt["arch"]), ckpt["config"]) == []


def test_types_and_ranges_are_checked_with_the_key_named():
    apen = config_class("apen")
    for bad, message in [
        ({"knn": 0}, "'knn' must be an integer >= 1, got 0"),
        ({"knn": 2.0}, "'knn' must be an integer, got 2.0"),
        ({"knn": True}, "'knn' must be an integer, got True"),
        ({"group": "SO3"}, "'group' must be one of 'SE3' or 'E3', got 'SO3'"),
        ({"init_variance": 0}, "'init_variance' must be a number > 0"),
        ({"inv_channels": [8]}, "'inv_channels' needs one entry per block (4, as 'variances')"),
    ]:
        with pytest.raises(ModelConfigError) as info:
            apen.resolve(bad)
        assert message in str(info.value), (bad, str(info.value))
    # nested configs name the path
    problems = config_problems(config_class("apen_detector"), {"backbone": {"knn": -1}, "vote_k": 0})
    assert ("backbone.knn", "must be an integer >= 1, got -1") in problems
    assert ("vote_k", "must be an integer >= 1, got 0") in problems
    problems = config_problems(config_class("eqgat_diff"), {"denoiser": {"s_dimm": 3}})
    assert problems and "'denoiser': unknown keys ['s_dimm']" in problems[0][1]


def test_defaults_are_filled_in_and_metadata_is_dropped():
    cfg = config_class("apen_detector").resolve({"num_classes": 3, "train_rotation": "z"})
    assert cfg["backbone"]["num_classes"] == 4  # background + the object classes
    assert cfg["mean_sizes"] == [[1.0, 1.0, 1.0]] * 3
    assert "train_rotation" not in cfg
    assert config_class("tinvnn_dgcnn").resolve({})["input"] == "mds"
    with pytest.raises(ModelConfigError, match="'input' must be one of 'mds'"):
        config_class("tinvnn_dgcnn").resolve({"input": "xyz"})


def test_an_experiment_config_is_refused_at_load_naming_the_file_and_model_key(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "task: scene_detection_segmentation\nmodel:\n  seg_weight: 0.5\n  backbone:\n    knn: 0\n"
    )
    with pytest.raises(
        ConfigError, match=r"exp\.yaml: field 'model\.backbone\.knn': must be an integer >= 1"
    ):
        load_config(path)
    path.write_text("task: pointcloud_classification\nmodel:\n  arch: parot\n  num_patchs: 8\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: field 'model': unknown keys \['num_patchs'\]"):
        load_config(path)
    path.write_text("task: pointcloud_classification\nmodel:\n  arch: parrot\n")
    with pytest.raises(ConfigError, match=r"field 'model\.arch': unknown architecture 'parrot'"):
        load_config(path)
    # the task's own keys (loss weights) and arch pass; the default architecture is the task's
    path.write_text("task: scene_detection_segmentation\nmodel:\n  det_weight: 2.0\n")
    cfg = load_config(path)
    assert cfg.arch == TASKS["scene_detection_segmentation"].default_arch == "apen_detector"


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        # a key of another data set is refused, named by its YAML path (no union tag in it)
        ("{dataset: qm9, per_class: 3}", "data.per_class", "Extra inputs"),
        ("{per_class: 3}", "data.per_class", "Extra inputs"),  # no dataset key: the task's (qm9)
        ("{dataset: shapes, difficulty: extreme}", "data.difficulty", "'standard' or 'hard'"),
        ("{dataset: rooms, num_scenes: 0}", "data.num_scenes", "greater than or equal to 1"),
        ("{dataset: modelnet40}", "data", "does not match any of the expected tags"),
    ],
)
def test_data_section_is_typed_per_dataset(tmp_path, data, field, words):
    path = tmp_path / "exp.yaml"
    path.write_text(f"task: eqgat_diff\ndata: {data}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: field '{field}'") and words in msg, msg


def test_data_section_must_be_one_the_task_reads(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("task: detection\ndata: {dataset: shapes}\n")
    with pytest.raises(
        ConfigError, match=r"exp.yaml: data.dataset: the detection task reads 'rooms', got 'shapes'"
    ):
        load_config(path)
    path.write_text(
        "task: pointcloud_classification\ndata: {dataset: shapes, per_class: 4, num_points: 64}\n"
    )
    data = load_config(path).data
    assert (data.dataset, data.per_class, data.num_points, data.train_rotation) == ("shapes", 4, 64, "z")
    path.write_text("task: scene_segmentation\n")  # no data section: the task's data set, its defaults
    assert load_config(path).data.dataset == "rooms"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_spec_names_a_real_runner_architecture_and_data_sets(task):
    import importlib

    from geo3d.train.config import DATA_TAGS

    spec = TASKS[task]
    module, _, cls = spec.runner.partition(":")
    assert callable(getattr(importlib.import_module(module), cls))
    assert spec.default_arch in ARCHITECTURES
    assert spec.datasets and set(spec.datasets) <= set(DATA_TAGS)
    assert not set(spec.model_keys) & set(config_class(spec.default_arch).model_fields)
