"""Backend selection, and what happens when the native build is missing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geo3d.ops import _native, radius_graph

ROOT = Path(__file__).resolve().parent.parent


def test_missing_extension_falls_back_to_reference_with_a_reason(monkeypatch):
    reason = "geo3d._C could not be imported (no compiler); reinstall with a C++ compiler"
    monkeypatch.setattr(_native, "_load", lambda: (None, reason))
    status = _native.backend_status()
    assert status["reference"][0]
    assert status["cpu"] == (False, reason)
    assert status["cuda"] == (False, reason)
    assert _native.select_backend(torch.device("cpu"), None, "UNUSED_ENV") == "reference"
    with pytest.raises(RuntimeError, match=r"not available: geo3d\._C could not be imported"):
        _native.select_backend(torch.device("cpu"), "cpu", "UNUSED_ENV")
    edge_index, _ = radius_graph(torch.rand(10, 3), 0.5)
    assert edge_index.shape[0] == 2


def test_backend_must_match_device():
    if not _native.backend_status()["cpu"][0]:
        pytest.skip("needs the cpu backend")
    with pytest.raises(ValueError, match="'cpu' cannot run on tensors on cuda"):
        _native.select_backend(torch.device("cuda"), "cpu", "UNUSED_ENV")


def test_install_without_a_compiler_still_succeeds(tmp_path):
    """setup.py marks the extension optional: a failed compile leaves a pure-Python install."""
    for name in ["setup.py", "pyproject.toml", "README.md", "cuda_ext"]:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    (tmp_path / "geo3d").mkdir()
    (tmp_path / "geo3d" / "version.py").write_text('__version__ = "0.0.0"\n')
    env = {"PATH": "/usr/bin:/bin", "CC": "/nonexistent/cc", "CXX": "/nonexistent/c++", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "geo3d._C" in proc.stdout + proc.stderr  # setuptools names the extension it skipped
    assert not list((tmp_path / "geo3d").glob("_C*.so"))
