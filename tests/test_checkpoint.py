"""Checkpoint format and model registry: round trip, atomic writes, refusal of foreign files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

import geo3d
from geo3d import registry
from geo3d.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, save_checkpoint


class TinyNet(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lin = nn.Linear(3, hidden)

    def forward(self, x):
        return self.lin(x)


@pytest.fixture
def tiny_arch(monkeypatch):
    monkeypatch.setitem(registry.ARCHITECTURES, "tiny_test_net", lambda cfg: TinyNet(cfg["hidden"]))
    return "tiny_test_net"


def _save(path, model, **kw):
    args = dict(arch="tiny_test_net", task="test", config={"hidden": 4}, state_dict=model.state_dict())
    args.update(kw)
    return save_checkpoint(path, **args)


def test_round_trip_by_path(tmp_path, tiny_arch):
    model = TinyNet(4)
    path = _save(tmp_path / "m.pt", model, metrics={"headline": "mae", "mae": 0.25})
    loaded = geo3d.load_model(path)
    assert not loaded.training
    x = torch.randn(5, 3)
    assert torch.equal(loaded(x), model(x))
    meta = loaded.geo3d_checkpoint
    assert meta["config"] == {"hidden": 4}
    assert meta["metrics"]["mae"] == 0.25
    assert meta["geo3d_version"] == geo3d.__version__
    assert "state_dict" not in meta


def test_shipped_name_resolves_and_is_listed(tmp_path, tiny_arch, monkeypatch):
    monkeypatch.setattr(registry, "CHECKPOINT_DIR", tmp_path)
    _save(tmp_path / "tiny.pt", TinyNet(4), metrics={"headline": "acc", "acc": 0.9})
    tiny = registry.ShippedModel("tiny", "tiny.pt", "test", "a test model")
    monkeypatch.setattr(registry, "SHIPPED", {"tiny": tiny})
    assert isinstance(geo3d.load_model("tiny"), TinyNet)
    (row,) = registry.describe_shipped()
    assert row["name"] == "tiny" and row["params"] == 4 * 3 + 4 and row["headline"] == "acc=0.9"


def test_write_is_atomic(tmp_path, tiny_arch, monkeypatch):
    path = tmp_path / "m.pt"
    _save(path, TinyNet(4))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        _save(path, TinyNet(4))
    assert path.read_bytes() == before  # the old checkpoint survives
    assert os.listdir(tmp_path) == ["m.pt"]  # no temporary file left behind


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_foreign_files_are_refused_clearly(tmp_path, tiny_arch):
    pickled = tmp_path / "evil.pt"
    with open(pickled, "wb") as fh:
        pickle.dump({"format": "geo3d.checkpoint", "x": _Evil()}, fh)
    with pytest.raises(CheckpointError, match=r"evil\.pt: not a geo3d checkpoint"):
        load_checkpoint(pickled)
    assert not os.path.exists("pwned")

    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match=r"plain\.pt: not a geo3d checkpoint"):
        geo3d.load_model(plain)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a zip file at all")
    with pytest.raises(CheckpointError, match=r"garbage\.pt"):
        load_checkpoint(garbage)

    truncated = tmp_path / "truncated.pt"
    good = _save(tmp_path / "good.pt", TinyNet(4)).read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt"):
        load_checkpoint(truncated)


def test_newer_format_and_missing_fields(tmp_path, tiny_arch):
    path = _save(tmp_path / "m.pt", TinyNet(4))
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="upgrade geo3d"):
        load_checkpoint(tmp_path / "future.pt")
    payload["format_version"] = FORMAT_VERSION
    del payload["config"]
    torch.save(payload, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing the fields"):
        load_checkpoint(tmp_path / "partial.pt")


def test_unknown_arch_and_mismatched_weights(tmp_path, tiny_arch):
    _save(tmp_path / "alien.pt", TinyNet(4), arch="no_such_arch")
    with pytest.raises(CheckpointError, match="unknown architecture 'no_such_arch'"):
        geo3d.load_model(tmp_path / "alien.pt")
    _save(tmp_path / "wrong.pt", TinyNet(4), config={"hidden": 5})
    with pytest.raises(CheckpointError, match="weights do not fit"):
        geo3d.load_model(tmp_path / "wrong.pt")


def test_unknown_name_lists_shipped_models(monkeypatch):
    monkeypatch.setattr(registry, "SHIPPED", {})
    with pytest.raises(FileNotFoundError, match="neither a shipped model"):
        geo3d.load_model("definitely-not-a-model")


def test_export_drops_training_state_and_keeps_permissions(tmp_path, tiny_arch):
    from geo3d.checkpoint import export_checkpoint

    model = TinyNet(4)
    src = _save(tmp_path / "train.pt", model, extra={"train_state": {"optimizer": {"lr": torch.ones(1000)}}})
    dst = export_checkpoint(src, tmp_path / "ship.pt", metrics={"headline": "acc", "acc": 0.5})
    assert dst.stat().st_size < src.stat().st_size
    ckpt = load_checkpoint(dst)
    assert ckpt["extra"] == {} and ckpt["metrics"]["acc"] == 0.5
    assert torch.equal(geo3d.load_model(dst).lin.weight, model.lin.weight)
    umask = os.umask(0)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o666 & ~umask


def test_every_registered_architecture_resolves_and_unknown_ones_are_named():
    from geo3d.registry import ARCHITECTURES, architecture

    for name in ARCHITECTURES:
        assert callable(architecture(name)), name
    with pytest.raises(CheckpointError, match=r"unknown architecture 'apne'.*apen"):
        architecture("apne")
