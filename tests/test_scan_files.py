"""read_point_cloud on small PLY / XYZ / TXT / CSV / NPY files, and every malformed case named by file and line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geo3d.data.pointcloud_files import PointCloudFileError
from geo3d.data.scan_files import ScanFileError, read_point_cloud

POS = np.array([[0.0, 1.0, 2.0], [1.5, -2.25, 3.0], [-4.0, 0.5, 0.125]])
NRM = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def ply_header(
    fmt, vertex_props, count=3, before="", after="element face 1\nproperty list uchar int vertex_indices\n"
):
    props = "".join(f"property {t} {n}\n" for t, n in vertex_props)
    return f"ply\nformat {fmt} 1.0\ncomment made by a test\n{before}element vertex {count}\n{props}{after}end_header\n"


def write_binary_ply(path, endian="<", count=3, cut=0, before=None, values=None):
    props = [
        ("double", "x"),
        ("float", "y"),
        ("float", "z"),
        ("uchar", "red"),
        ("float", "nx"),
        ("float", "ny"),
    ]
    props += [("float", "nz")]
    dtype = np.dtype(
        [("x", endian + "f8"), ("y", endian + "f4"), ("z", endian + "f4"), ("red", "u1")]
        + [(n, endian + "f4") for n in ("nx", "ny", "nz")]
    )
    vertex = np.zeros(count, dtype=dtype)
    table = values if values is not None else np.concatenate([POS, NRM], 1)
    for j, n in enumerate(("x", "y", "z")):
        vertex[n] = table[:count, j]
    for j, n in enumerate(("nx", "ny", "nz")):
        vertex[n] = table[:count, 3 + j]
    vertex["red"] = 200
    fmt = "binary_little_endian" if endian == "<" else "binary_big_endian"
    head = ply_header(
        fmt, props, count, before="element camera 1\nproperty float cx\nproperty int id\n" if before else ""
    )
    camera = np.zeros(1, dtype=[("cx", endian + "f4"), ("id", endian + "i4")]).tobytes() if before else b""
    face = bytes([3]) + np.array([0, 1, 2], dtype=endian + "i4").tobytes()
    body = camera + vertex.tobytes() + face
    path.write_bytes(head.encode() + body[: len(body) - cut if cut else None])
    return path


@pytest.mark.parametrize("endian", ["<", ">"])
def test_binary_ply_with_normals_extra_properties_and_faces(tmp_path, endian):
    d = read_point_cloud(write_binary_ply(tmp_path / "scan.ply", endian, before=True))
    assert d.pos.dtype == torch.float32 and torch.equal(d.pos, torch.tensor(POS, dtype=torch.float32))
    assert torch.equal(d.normal, torch.tensor(NRM, dtype=torch.float32))


def test_ascii_ply(tmp_path):
    head = ply_header("ascii", [("float", "x"), ("float", "y"), ("float", "z"), ("uchar", "red")])
    lines = [f"{x} {y} {z} 7" for x, y, z in POS]
    (tmp_path / "a.ply").write_text(head + "\n".join(lines) + "\n3 0 1 2\n")
    d = read_point_cloud(tmp_path / "a.ply")
    assert torch.equal(d.pos, torch.tensor(POS, dtype=torch.float32)) and "normal" not in d
    before = "element camera 2\nproperty float cx\n"
    head = ply_header("ascii", [("float", "y"), ("float", "x"), ("float", "z")], before=before, after="")
    (tmp_path / "b.ply").write_text(head + "9\n9\n" + "\n".join(f"{y} {x} {z}" for x, y, z in POS) + "\n")
    assert torch.equal(read_point_cloud(tmp_path / "b.ply").pos, torch.tensor(POS, dtype=torch.float32))


def test_text_and_npy_formats(tmp_path):
    xyz = "# x y z\n\n" + "\n".join(f"{x} {y}\t{z}  # a point" for x, y, z in POS) + "\n"
    (tmp_path / "s.xyz").write_text(xyz)
    (tmp_path / "s.csv").write_text(
        "\n".join(", ".join(str(v) for v in row) for row in np.c_[POS, NRM]) + "\n"
    )
    (tmp_path / "s.txt").write_text("\n".join(" ".join(str(v) for v in row) for row in np.c_[POS, NRM]))
    np.save(tmp_path / "a.npy", POS)
    np.save(tmp_path / "b.npy", np.c_[POS, NRM].astype(np.float32))
    np.save(tmp_path / "c.npy", np.array([[1, 2, 3]], dtype=np.int16))
    pos, nrm = torch.tensor(POS, dtype=torch.float32), torch.tensor(NRM, dtype=torch.float32)
    for name, normals in (
        ("s.xyz", False),
        ("s.csv", True),
        ("s.txt", True),
        ("a.npy", False),
        ("b.npy", True),
    ):
        d = read_point_cloud(str(tmp_path / name))
        assert torch.equal(d.pos, pos), name
        assert torch.equal(d.normal, nrm) if normals else "normal" not in d, name
    assert read_point_cloud(tmp_path / "c.npy").pos.tolist() == [[1.0, 2.0, 3.0]]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.xyz", "0 0 0\n1 1 1 1\n", r"a\.xyz, line 2: expected 3 values \(as on line 1\), got 4"),
        ("b.txt", "# header\n0 0 0 0\n", r"b\.txt, line 2: expected 3 \(x y z\) or 6 .* got 4"),
        ("c.csv", "0,0,0\n0,zero,0\n", r"c\.csv, line 2: value 2 is not a number: 'zero'"),
        ("d.xyz", "0 0 0\n1 nan 1\n", r"d\.xyz, line 2: NaN or inf coordinate"),
        ("e.xyz", "0 0 0 0 0 1\n1 1 1 inf 0 0\n", r"e\.xyz, line 2: NaN or inf normal"),
        ("f.xyz", "# nothing\n\n", r"f\.xyz: no points"),
        ("g.csv", "1,,2\n", r"g\.csv, line 1: value 2 is not a number: ''"),
    ],
)
def test_malformed_text_names_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ScanFileError, match=message):
        read_point_cloud(tmp_path / name)


def test_malformed_ply_names_file_line_and_field(tmp_path):
    xyz = [("float", "x"), ("float", "y"), ("float", "z")]
    cases = [
        (ply_header("ascii", xyz[:2]) + "0 0\n0 0\n0 0\n", r"'vertex' element has no 'z' property"),
        (ply_header("binary_middle_endian", xyz), r"line 2: unsupported PLY format 'binary_middle_endian'"),
        (ply_header("ascii", xyz) + "0 0 0\n0 0\n0 0 0\n", r"line 12: expected 3 values \(x y z\), got 2"),
        (ply_header("ascii", xyz) + "0 0 0\n0 x 0\n0 0 0\n", r"line 12: value 2 is not a number: 'x'"),
        (ply_header("ascii", xyz) + "0 0 0\n0 0 0\n0 0 inf\n", r"line 13: NaN or inf coordinate"),
        (ply_header("ascii", xyz, after="") + "0 0 0\n", r"body ends after 1 of 3 vertices"),
        (ply_header("ascii", xyz, count=0, after=""), r"no points"),
        (ply_header("ascii", [("float128", "x")]), r"line 5: unknown property type 'float128'"),
        ("ply\nformat ascii 1.0\nelement vertex many\nend_header\n", r"line 3: element count 'many'"),
        ("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n", r"no 'end_header'"),
        ("ply\nelement vertex 1\nproperty float x\nend_header\n", r"no 'format' line"),
        ("ply\nformat ascii 1.0\nelement face 0\nend_header\n", r"no 'vertex' element"),
        ("ply\nformat ascii 1.0\nvertices 3\nend_header\n", r"line 3: unexpected header line"),
        ("solid cube\n", r"not a PLY file"),
    ]
    for k, (text, message) in enumerate(cases):
        path = tmp_path / f"bad{k}.ply"
        path.write_text(text)
        with pytest.raises(ScanFileError, match=rf"bad{k}\.ply.*{message}"):
            read_point_cloud(path)


def test_malformed_binary_ply(tmp_path):
    with pytest.raises(
        ScanFileError, match=r"t\.ply: truncated binary body: 3 vertices need 87 bytes, the file has 72"
    ):
        read_point_cloud(
            write_binary_ply(tmp_path / "t.ply", cut=15 + 13)
        )  # face (13 bytes) + 15 vertex bytes
    values = np.c_[POS, NRM]
    values[2, 1] = np.nan
    with pytest.raises(ScanFileError, match=r"n\.ply, vertex 2: NaN or inf coordinate"):
        read_point_cloud(write_binary_ply(tmp_path / "n.ply", values=values))
    head = ply_header(
        "binary_little_endian",
        [("float", "x"), ("float", "y"), ("float", "z")],
        before="element e 1\nproperty list uchar int i\n",
    )
    (tmp_path / "l.ply").write_bytes(head.encode() + bytes(64))
    with pytest.raises(ScanFileError, match=r"l\.ply: element 'e' before 'vertex' has list properties"):
        read_point_cloud(tmp_path / "l.ply")


def test_malformed_npy_and_other_files(tmp_path):
    np.save(tmp_path / "shape.npy", np.zeros((4, 4)))
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    np.save(tmp_path / "text.npy", np.array([["a", "b", "c"]]))
    np.save(tmp_path / "obj.npy", np.array([[1, None, 2]], dtype=object), allow_pickle=True)
    bad = np.zeros((3, 3))
    bad[1, 2] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    np.savez(tmp_path / "z.npz", a=POS)
    (tmp_path / "z.npz").rename(tmp_path / "zip.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    (tmp_path / "scan.las").write_bytes(b"LASF")
    cases = [
        ("shape.npy", r"expected shape \[N, 3\] or \[N, 6\], got \[4, 4\]"),
        ("empty.npy", r"no points"),
        ("text.npy", r"expected a numeric array, got dtype <U1"),
        ("obj.npy", r"not a valid \.npy array"),
        ("inf.npy", r"row 1: NaN or inf coordinate"),
        ("zip.npy", r"holds several arrays"),
        ("junk.npy", r"not a valid \.npy array"),
        ("scan.las", r"unsupported extension '\.las'"),
        ("missing.xyz", r"no such file"),
    ]
    for name, message in cases:
        with pytest.raises(ScanFileError, match=rf"{name}.*{message}"):
            read_point_cloud(tmp_path / name)
    assert issubclass(ScanFileError, PointCloudFileError) and issubclass(ScanFileError, ValueError)
