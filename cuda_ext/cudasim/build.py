"""Sources and flags of geo3d's native builds: where each op's files are, and geo3d._cudasim,
the CUDA kernels built for the host simulator.

Used by setup.py (geo3d._C and the installed geo3d._cudasim) and
benchmarks/cudasim_mutations.py (builds of mutated kernel copies), so all compile the same
files. Layout of ``cuda_ext``: ``ops.cpp`` (the module and its op schemas), one folder per op
(``<op>/<op>_cpu.cpp``, ``<op>_cuda.cpp``, ``<op>_cuda_kernels.cu`` and its headers),
``common/`` (headers shared by the ops) and ``cudasim/`` (this simulator). Every include is
written from ``cuda_ext`` (``"common/cuda_binding.h"``, ``"radius_graph/radius_graph_core.h"``).
"""

from __future__ import annotations

import glob
import os

# Hidden visibility: the simulator's cuda* runtime functions must bind to its own
# definitions even in a process where a real libcudart is loaded.
CXX_FLAGS = [
    "-O2",
    "-std=c++17",
    "-ffp-contract=off",
    "-fvisibility=hidden",
    "-fvisibility-inlines-hidden",
    "-DGEO3D_CUDASIM",
]


# Folders of cuda_ext that hold no op.
NOT_OPS = ("common", "cudasim")


def op_dirs(cuda_ext: str) -> list[str]:
    """The op folders of ``cuda_ext`` (every subfolder but ``common`` and ``cudasim``)."""
    names = sorted(os.listdir(cuda_ext))
    ops = [n for n in names if n not in NOT_OPS and not n.startswith((".", "_"))]
    return [os.path.join(cuda_ext, n) for n in ops if os.path.isdir(os.path.join(cuda_ext, n))]


def op_sources(cuda_ext: str, pattern: str) -> list[str]:
    """The files of every op folder that match ``pattern`` (``*.cpp``, ``*_cuda.cpp``, ``*.cu``)."""
    return [f for d in op_dirs(cuda_ext) for f in sorted(glob.glob(os.path.join(d, pattern)))]


def sources(root: str, gen_dir: str, cuda_ext: str | None = None) -> list[str]:
    """The simulator, the ops' torch bindings (``*_cuda.cpp``) and every ``.cu`` file of ``cuda_ext``.

    Each ``.cu`` file is compiled through a one-line C++ file in ``gen_dir`` that
    ``#include``s it (a compiler driver would hand a ``.cu`` file to nvcc): the kernels are
    compiled from their own file, never copied. The wrappers are named by the ``.cu`` file's
    base name, so base names are unique across the folders (tests/test_cuda_build.py).
    """
    ext = cuda_ext or os.path.join(root, "cuda_ext")
    os.makedirs(gen_dir, exist_ok=True)
    out = [os.path.join(ext, "cudasim", name) for name in ("runtime.cpp", "module.cpp")]
    out += op_sources(ext, "*_cuda.cpp")
    kernels = op_sources(ext, "*.cu") + sorted(glob.glob(os.path.join(ext, "cudasim", "*.cu")))
    for cu in kernels:
        wrapper = os.path.join(gen_dir, os.path.basename(cu) + ".cpp")
        text = f'#include "{os.path.abspath(cu)}"\n'
        if not os.path.exists(wrapper) or open(wrapper).read() != text:
            with open(wrapper, "w") as fh:
                fh.write(text)
        out.append(wrapper)
    return out


def include_dirs(root: str, cuda_ext: str | None = None) -> list[str]:
    """The simulator's headers first: they stand in for cuda_runtime_api.h and c10/cuda/*."""
    ext = cuda_ext or os.path.join(root, "cuda_ext")
    return [os.path.join(ext, "cudasim"), ext]
