"""Articulated shapes: every part moves rigidly about its joint, labels stay, parts stay attached."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geo3d.data.articulated import Articulated, articulate
from geo3d.data.shapes import CLASS_NAMES, PARTS, make_shape

MULTI_PART = [k for k, name in enumerate(CLASS_NAMES) if len(PARTS[name]) > 1]


@pytest.mark.parametrize("label", MULTI_PART)
def test_each_part_moves_rigidly_and_stays_attached(label):
    rng = np.random.default_rng(label)
    rest = make_shape(label, 512, rng)
    moved, rot, shift = articulate(rest, rng, max_angle=0.8)
    assert torch.equal(moved.part, rest.part) and torch.equal(moved.y, rest.y)
    assert moved.pos.dtype == moved.normal.dtype == torch.float32
    assert torch.allclose(moved.pos.mean(0), torch.zeros(3), atol=1e-5)  # re-centred, not rescaled
    assert torch.allclose(
        rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand_as(rot), atol=1e-12
    )
    assert torch.allclose(torch.linalg.det(rot), torch.ones(len(rot), dtype=torch.float64))
    turned = 0
    root = PARTS[CLASS_NAMES[label]][0]
    for p in PARTS[CLASS_NAMES[label]]:
        sel = rest.part == p
        a, b = rest.pos[sel].double(), moved.pos[sel].double()
        assert torch.allclose(a @ rot[p].T + shift[p], b, atol=1e-5)  # the reported rigid motion
        assert torch.allclose(torch.cdist(a, a), torch.cdist(b, b), atol=1e-5)  # rigid
        assert torch.allclose(rest.normal[sel].double() @ rot[p].T, moved.normal[sel].double(), atol=1e-5)
        relative = rot[root].T @ rot[p]  # motion relative to the root part
        turned += int(not torch.allclose(relative, torch.eye(3, dtype=torch.float64), atol=1e-3))
        if p != root:  # still touching some other part
            others = moved.pos[~sel]
            assert torch.cdist(b.float(), others).min() < 0.1, CLASS_NAMES[label]
    assert turned == len(PARTS[CLASS_NAMES[label]]) - 1  # every non-root part turned


def test_articulated_is_deterministic_cached_and_shaped_like_shapes(tmp_path):
    a = Articulated("train", per_class=1, num_points=128, cache_dir=tmp_path)
    b = Articulated("train", per_class=1, num_points=128, cache_dir=tmp_path)  # from the cache
    c = Articulated("train", per_class=1, num_points=128, cache_dir="")
    assert len(a) == len(CLASS_NAMES) and len(list(tmp_path.iterdir())) == 1
    for k in range(len(a)):
        for key in ("pos", "normal", "y", "part"):
            assert torch.equal(a[k][key], b[k][key]) and torch.equal(a[k][key], c[k][key])
        d = a[k]
        assert d.pos.shape == d.normal.shape == (128, 3) and d.y.shape == (1,) and d.part.dtype == torch.long
        assert set(d.part.tolist()) <= set(PARTS[CLASS_NAMES[int(d.y)]])
        assert torch.allclose(d.normal.norm(dim=1), torch.ones(128), atol=1e-4)
    other = Articulated("train", per_class=1, num_points=128, max_angle=0.1, cache_dir="")
    assert any(not torch.equal(other[k].pos, a[k].pos) for k in range(len(a)))
    with pytest.raises(ValueError, match="split must be"):
        Articulated("dev", cache_dir="")
