"""ModelNet40 / ShapeNetPart readers on tiny fixture files written in the distributed formats."""

from __future__ import annotations

import json

import pytest

from geo3d.data.pointcloud_files import ModelNet40, PointCloudFileError, ShapeNetPart


def write_modelnet(root, rows_per_shape=5):
    (root / "airplane").mkdir(parents=True)
    (root / "bed").mkdir()
    (root / "modelnet40_shape_names.txt").write_text("airplane\nbed\n")
    (root / "modelnet40_train.txt").write_text("airplane_0001\nbed_0002\n")
    (root / "modelnet40_test.txt").write_text("bed_0003\n")
    for cls, k in (("airplane", 1), ("bed", 2), ("bed", 3)):
        lines = [f"{i * 0.1:.6f},{k:.6f},0.500000,0.0,0.0,1.0" for i in range(rows_per_shape)]
        (root / cls / f"{cls}_{k:04d}.txt").write_text("\n".join(lines) + "\n")


def test_modelnet40_normal_resampled(tmp_path):
    write_modelnet(tmp_path)
    train = ModelNet40(tmp_path, "train", num_points=3)
    assert len(train) == 2 and train.classes == ["airplane", "bed"]
    d = train[1]
    assert d.pos.shape == (3, 3) and d.normal.shape == (3, 3) and int(d.y) == 1
    assert float(d.pos[2, 0]) == pytest.approx(0.2)
    assert len(ModelNet40(tmp_path, "test")) == 1


def test_modelnet40_malformed_line_is_named(tmp_path):
    write_modelnet(tmp_path)
    (tmp_path / "bed" / "bed_0002.txt").write_text("0,0,0,0,0,1\n0,0,0,oops,0,1\n")
    with pytest.raises(PointCloudFileError, match=r"bed_0002\.txt, line 2: not a number"):
        ModelNet40(tmp_path, "train")[1]
    (tmp_path / "bed" / "bed_0002.txt").write_text("0,0,0\n")
    with pytest.raises(PointCloudFileError, match=r"bed_0002\.txt, line 1: expected 6 values, got 3"):
        ModelNet40(tmp_path, "train")[1]
    (tmp_path / "modelnet40_test.txt").unlink()
    with pytest.raises(PointCloudFileError, match=r"modelnet40_test\.txt: missing"):
        ModelNet40(tmp_path, "test")


def write_shapenetpart(root):
    (root / "02691156").mkdir(parents=True)
    (root / "03001627").mkdir()
    (root / "train_test_split").mkdir()
    (root / "synsetoffset2category.txt").write_text("Airplane\t02691156\nChair\t03001627\n")
    for synset, token, part in (("02691156", "aaa", 0), ("03001627", "bbb", 12)):
        lines = [f"{i} 0 0 0 0 1 {part + i % 2}" for i in range(4)]
        (root / synset / f"{token}.txt").write_text("\n".join(lines) + "\n")
    split = ["shape_data/02691156/aaa", "shape_data/03001627/bbb"]
    (root / "train_test_split" / "shuffled_train_file_list.json").write_text(json.dumps(split))


def test_shapenetpart(tmp_path):
    write_shapenetpart(tmp_path)
    ds = ShapeNetPart(tmp_path, "train")
    assert len(ds) == 2 and ds.categories == ["Airplane", "Chair"]
    d = ds[1]
    assert int(d.y) == 1 and d.part.tolist() == [12, 13, 12, 13] and d.normal.shape == (4, 3)


def test_shapenetpart_errors(tmp_path):
    write_shapenetpart(tmp_path)
    (tmp_path / "train_test_split" / "shuffled_train_file_list.json").write_text('["shape_data/99999999/x"]')
    with pytest.raises(PointCloudFileError, match="is not 'shape_data/<synset>/<token>'"):
        ShapeNetPart(tmp_path, "train")
    (tmp_path / "train_test_split" / "shuffled_train_file_list.json").write_text("[not json")
    with pytest.raises(PointCloudFileError, match="not valid JSON"):
        ShapeNetPart(tmp_path, "train")
    with pytest.raises(PointCloudFileError, match=r"shuffled_test_file_list\.json: missing"):
        ShapeNetPart(tmp_path, "test")


def test_modelnet40_hdf5(tmp_path):
    import h5py
    import numpy as np

    for k in range(2):
        with h5py.File(tmp_path / f"ply_data_train{k}.h5", "w") as fh:
            fh["data"] = np.full((3, 2048, 3), k, dtype=np.float32)
            fh["label"] = np.arange(3, dtype=np.uint8).reshape(3, 1) + k
    (tmp_path / "train_files.txt").write_text(
        "data/modelnet40_ply_hdf5_2048/ply_data_train0.h5\ndata/modelnet40_ply_hdf5_2048/ply_data_train1.h5\n"
    )
    ds = ModelNet40(tmp_path, "train", num_points=1024)
    assert (
        len(ds) == 6 and ds[4].pos.shape == (1024, 3) and int(ds[4].y) == 2 and float(ds[4].pos[0, 0]) == 1.0
    )
    (tmp_path / "train_files.txt").write_text("ply_data_train7.h5\n")
    with pytest.raises(
        PointCloudFileError, match=r"ply_data_train7\.h5: listed in train_files\.txt but missing"
    ):
        ModelNet40(tmp_path, "train")
