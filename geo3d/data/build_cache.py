"""On-disk cache of the procedural data sets (Shapes, Articulated, Rooms): build once, load after.

A set is a dict of tensors, fully determined by its arguments; ``key`` spells
them out (with the generator's version) and names the file, so changing any
argument or the generator builds a new file instead of loading a stale one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from geo3d.files import atomic_write


def cache_root() -> Path:
    """``$GEO3D_CACHE`` if set, else ``~/.cache/geo3d``: every data set caches under it."""
    base = os.environ.get("GEO3D_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "geo3d"


def load_or_build(
    kind: str, key: str, cache_dir: str | Path | None, build: Callable[[], dict[str, Tensor]]
) -> dict[str, Tensor]:
    """The tensors of ``kind`` (e.g. ``"shapes"``) for ``key``, from the cache or from ``build()``.

    ``cache_dir``: default ``cache_root() / kind``; ``""`` disables the cache.
    Files are written atomically and read with ``weights_only=True``.
    """
    if str(cache_dir) == "" and cache_dir is not None:
        return build()
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / kind
    path = folder / f"{kind}_{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    data = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save(data, tmp)
    return data
