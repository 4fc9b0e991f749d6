"""Loading of the compiled extension (geo3d._C) and backend availability.

Backends: ``reference`` (plain torch, always there, the oracle), ``cpu`` (C++
and OpenMP from ``cuda_ext/``) and ``cuda``. Every op picks the fastest one
available for the device of its inputs; an environment variable or a
``backend=`` argument forces one.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch

BACKENDS = ("reference", "cpu", "cuda")


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    try:
        from geo3d import _C  # registers torch.ops.geo3d.*
    except ImportError as exc:
        return None, (
            f"geo3d._C could not be imported ({exc}); the native build failed or was skipped at "
            "install time: reinstall with a C++ compiler (`make install`)"
        )
    return _C, ""


def native() -> ModuleType | None:
    """The loaded extension module, or None."""
    return _load()[0]


def backend_status() -> dict[str, tuple[bool, str]]:
    """Map backend name -> (available, reason it is not / what it runs on)."""
    mod, why = _load()
    status = {"reference": (True, "plain torch")}
    status["cpu"] = (True, "C++ / OpenMP") if mod is not None else (False, why)
    if mod is None:
        status["cuda"] = (False, why)
    elif not getattr(mod, "with_cuda", False):
        if torch.version.cuda is None:
            status["cuda"] = (False, "torch is a CPU build, so geo3d._C was built without CUDA")
        else:
            status["cuda"] = (False, "geo3d._C was built without CUDA (nvcc/CUDA_HOME not found at install)")
    elif not torch.cuda.is_available():
        status["cuda"] = (False, "no CUDA device visible")
    else:
        status["cuda"] = (True, torch.cuda.get_device_name())
    return status


def select_backend(device: torch.device, requested: str | None, env_var: str) -> str:
    """Backend for inputs on ``device``: ``requested`` > ``$env_var`` > fastest available.

    Raises:
        ValueError: unknown backend name, or one that cannot run on ``device``.
        RuntimeError: a forced backend that is not available, with the reason.
    """
    name = requested or os.environ.get(env_var) or None
    status = backend_status()
    if name is None:
        native_name = "cuda" if device.type == "cuda" else "cpu"
        return native_name if status.get(native_name, (False, ""))[0] else "reference"
    if name not in BACKENDS:
        source = "backend=" if requested else f"${env_var}"
        raise ValueError(f"unknown backend {name!r} (from {source}); choose one of {', '.join(BACKENDS)}")
    ok, why = status[name]
    if not ok:
        raise RuntimeError(f"backend {name!r} is not available: {why}")
    if name != "reference" and name != device.type:
        raise ValueError(f"backend {name!r} cannot run on tensors on {device}")
    return name
