"""Sources and flags of geo3d._cudasim, the CUDA kernels built for the host simulator.

Used by setup.py (the installed build) and benchmarks/cudasim_mutations.py (builds of
mutated kernel copies), so both compile the same thing.
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


def sources(root: str, gen_dir: str, cuda_ext: str | None = None) -> list[str]:
    """The simulator, the torch bindings (``*_cuda.cpp``) and every ``.cu`` file of ``cuda_ext``.

    Each ``.cu`` file is compiled through a one-line C++ file in ``gen_dir`` that
    ``#include``s it (a compiler driver would hand a ``.cu`` file to nvcc): the kernels are
    compiled from their own file, never copied.
    """
    ext = cuda_ext or os.path.join(root, "cuda_ext")
    os.makedirs(gen_dir, exist_ok=True)
    out = [os.path.join(ext, "cudasim", name) for name in ("runtime.cpp", "module.cpp")]
    out += sorted(glob.glob(os.path.join(ext, "*_cuda.cpp")))
    kernels = sorted(glob.glob(os.path.join(ext, "*.cu"))) + sorted(
        glob.glob(os.path.join(ext, "cudasim", "*.cu"))
    )
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
    return [os.path.join(ext, "cudasim"), os.path.join(ext, "include"), ext]
