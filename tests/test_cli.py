"""The geo3d command: help, info, models, neighbors, demo, and clear errors on bad files."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from geo3d import registry
from geo3d.cli import app

runner = CliRunner()


def _plain(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\x1b\[[0-9;]*m", "", text))


def test_help_lists_subcommands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ["info", "models", "neighbors", "demo"]:
        assert cmd in result.output


def test_info_reports_backends_and_reasons():
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    out = _plain(result.output)
    assert "reference" in out and "cpu" in out and "cuda" in out
    assert "torch" in out and "e3nn" in out
    # This machine has no CUDA: the reason must be spelled out.
    assert "CPU build" in out or "no CUDA device" in out or "without CUDA" in out


def test_models_without_shipped_models(monkeypatch):
    monkeypatch.setattr(registry, "SHIPPED", {})
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "No models ship" in result.output


def test_demo_matches_ase():
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "match ase.neighborlist exactly" in _plain(result.output)


def test_neighbors_on_a_user_file(tmp_path):
    from ase.build import bulk
    from ase.io import write

    path = tmp_path / "al.extxyz"
    write(path, [bulk("Al", "fcc", a=4.05), bulk("Al", "fcc", a=4.2)])
    result = runner.invoke(app, ["neighbors", str(path), "-r", "3.0", "--check-ase"])
    assert result.exit_code == 0, result.output
    out = _plain(result.output)
    assert out.count("identical edges and shifts") == 2
    assert "min 12 mean 12.00 max 12" in out


def test_neighbors_bad_files_name_the_file(tmp_path):
    missing = runner.invoke(app, ["neighbors", str(tmp_path / "nope.xyz")])
    assert missing.exit_code == 1 and "nope.xyz" in _plain(missing.output)

    broken = tmp_path / "broken.xyz"
    broken.write_text("3\ncomment\nCu 0 0 0\nCu 1 1\n")
    result = runner.invoke(app, ["neighbors", str(broken)])
    assert result.exit_code == 1
    assert "broken.xyz" in _plain(result.output)

    nan = tmp_path / "nan.xyz"
    nan.write_text("2\ncomment\nCu 0 0 0\nCu nan 1 1\n")
    result = runner.invoke(app, ["neighbors", str(nan)])
    assert result.exit_code == 1
    out = _plain(result.output)
    assert "nan.xyz" in out and "NaN" in out


def test_singular_periodic_cell_is_reported(tmp_path):
    path = tmp_path / "flat.extxyz"
    path.write_text(
        '2\nLattice="3.0 0.0 0.0 0.0 3.0 0.0 0.0 0.0 0.0" Properties=species:S:1:pos:R:3 pbc="T T T"\n'
        "Cu 0 0 0\nCu 1 1 0\n"
    )
    result = runner.invoke(app, ["neighbors", str(path)])
    assert result.exit_code == 1
    out = _plain(result.output)
    assert "flat.extxyz" in out and "singular" in out


def test_neighbors_app_reports_each_frame(tmp_path):
    """geo3d.apps.neighbors (what `geo3d neighbors` prints): fcc Cu has 12 neighbours at 3 Å, as ASE."""
    from ase.build import bulk
    from ase.io import write

    from geo3d.apps.neighbors import file_neighbors

    path = tmp_path / "cu.extxyz"
    write(path, [bulk("Cu", "fcc", a=3.6), bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))])
    reports = file_neighbors(path, 3.0, check_ase=True)
    assert [r.num_atoms for r in reports] == [1, 2]
    for r in reports:
        assert r.neighbours == (12, 12.0, 12) and r.num_edges == 12 * r.num_atoms
        assert r.num_image_edges > 0 and r.matches_ase is True and r.pbc == (True, True, True)
        assert r.ase_num_edges == r.num_edges
        assert abs(r.shortest - 3.6 / 2**0.5) < 1e-5
