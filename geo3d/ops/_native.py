"""Loading of the compiled extensions (geo3d._C, geo3d._cudasim) and backend availability.

Backends: ``reference`` (plain torch, always there, the oracle), ``cpu`` (C++
and OpenMP from ``cuda_ext/``), ``cuda``, and ``cudasim``: the CUDA kernels and
their launch code built for the host simulator of ``cuda_ext/cudasim`` (CPU
tensors, slow; for tests, never picked unless forced). Every op picks the fastest
one available for the device of its inputs; an environment variable or a
``backend=`` argument forces one.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from types import ModuleType

import torch

BACKENDS = ("reference", "cpu", "cuda", "cudasim")
# A simulator build to load instead of geo3d._cudasim (benchmarks/cudasim_mutations.py
# points it at mutated kernels, one process per build).
CUDASIM_LIBRARY_ENV = "GEO3D_CUDASIM_LIBRARY"


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


@functools.cache
def _load_cudasim() -> tuple[ModuleType | None, str]:
    path = os.environ.get(CUDASIM_LIBRARY_ENV)
    try:
        if path:
            spec = importlib.util.spec_from_file_location("_cudasim", path)
            if spec is None or spec.loader is None:
                raise ImportError(f"${CUDASIM_LIBRARY_ENV}={path} is not an extension module")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)  # registers torch.ops.geo3d_cudasim.*
            return mod, ""
        from geo3d import _cudasim

        return _cudasim, ""
    except (ImportError, OSError) as exc:
        return None, (
            f"the CUDA simulator could not be loaded ({exc}); it is built by `make install` "
            "unless GEO3D_NO_CUDASIM=1"
        )


def cudasim() -> ModuleType:
    """The simulator module (``configure``, ``settings``, ``stats``, self-tests).

    Raises:
        RuntimeError: it is not built here, with the reason.
    """
    mod, why = _load_cudasim()
    if mod is None:
        raise RuntimeError(why)
    return mod


def ops(backend: str):
    """``torch.ops`` namespace of a native backend's kernels."""
    if backend == "cudasim":
        cudasim()
        return torch.ops.geo3d_cudasim
    return torch.ops.geo3d


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
    sim, sim_why = _load_cudasim()
    status["cudasim"] = (
        (True, "CUDA kernels on the host simulator (tests; slow)") if sim else (False, sim_why)
    )
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
    runs_on = {"cpu": "cpu", "cuda": "cuda", "cudasim": "cpu"}
    if name != "reference" and runs_on[name] != device.type:
        raise ValueError(f"backend {name!r} cannot run on tensors on {device}")
    return name
