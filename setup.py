"""Build glue for geo3d's native ops (cuda_ext/ -> geo3d._C, geo3d._cudasim).

The extensions are optional: if they cannot be built (no compiler), geo3d installs
anyway and runs on the `reference` backend; `geo3d info` says why. The CUDA
sources are added to geo3d._C only where torch has CUDA and nvcc is found.
geo3d._cudasim is the same CUDA kernels and launch code built with the C++ compiler
for the host simulator in cuda_ext/cudasim (the `cudasim` backend of the tests);
GEO3D_NO_CUDASIM=1 skips it. Both take their source lists from cuda_ext/cudasim/build.py
(cuda_ext/ops.cpp, then one folder per op, headers in cuda_ext/common).
"""

import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _native_build():
    """cuda_ext/cudasim/build.py: the source lists and flags (benchmarks/cudasim_mutations.py uses it too)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "cudasim_build", os.path.join(ROOT, "cuda_ext", "cudasim", "build.py")
    )
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def _accepts(flag: str) -> bool:
    """Whether the C++ compiler takes ``flag`` (e.g. -march=native is x86/ARM-gcc/clang only)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.cpp")
        with open(src, "w") as fh:
            fh.write("int main() { return 0; }\n")
        cxx = os.environ.get("CXX", "c++")
        try:
            result = subprocess.run([cxx, flag, src, "-o", os.path.join(tmp, "t")], capture_output=True)
        except OSError:
            return False
        return result.returncode == 0


def _extensions():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # torch is installed first by the Makefile; without it, no native ops
        return [], {}
    # -ffp-contract=off: no fused multiply-adds, so CPU and CUDA round (and bin) identically
    # (the tensor-product file turns contraction back on for itself).
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off"]
    # geo3d is built from source on the machine that runs it, so use its vector units
    # (AVX2/AVX-512 where present; without FMA contraction the radius graph's results
    # do not depend on them). GEO3D_PORTABLE_BUILD=1 for a build to copy elsewhere.
    if os.environ.get("GEO3D_PORTABLE_BUILD", "0") != "1" and _accepts("-march=native"):
        cxx.append("-march=native")
    build = _native_build()
    sources = ["cuda_ext/ops.cpp", *build.op_sources("cuda_ext", "*.cpp")]
    with_cuda = (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and os.environ.get("GEO3D_NO_CUDA", "0") != "1"
    )
    if not with_cuda:
        sources = [s for s in sources if not s.endswith("_cuda.cpp")]
        ext = CppExtension(
            "geo3d._C",
            sources,
            include_dirs=[os.path.join(ROOT, "cuda_ext")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    else:
        sources += build.op_sources("cuda_ext", "*.cu")
        ext = CUDAExtension(
            "geo3d._C",
            sources,
            include_dirs=[os.path.join(ROOT, "cuda_ext")],
            define_macros=[("GEO3D_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-std=c++17"]},
            extra_link_args=["-fopenmp"],
        )
    ext.optional = True  # a failed native build leaves the reference backend, not a failed install
    exts = [ext]
    if os.environ.get("GEO3D_NO_CUDASIM", "0") != "1":
        exts.append(_cudasim_extension(CppExtension, build))
    # GEO3D_NINJA=1: parallel builds (MAX_JOBS) where ninja is installed, e.g. benchmarks/gpu_check.sh.
    use_ninja = os.environ.get("GEO3D_NINJA", "0") == "1"
    return exts, {"build_ext": BuildExtension.with_options(use_ninja=use_ninja)}


def _cudasim_extension(CppExtension, build):
    # The source list and flags live beside the simulator (benchmarks/cudasim_mutations.py
    # builds mutated copies from the same list).
    sources = build.sources(ROOT, os.path.join(ROOT, "build", "cudasim_src"))
    ext = CppExtension(
        "geo3d._cudasim",
        [os.path.relpath(s, ROOT) for s in sources],
        include_dirs=build.include_dirs(ROOT),
        extra_compile_args={"cxx": build.CXX_FLAGS},
    )
    ext.optional = True
    return ext


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
