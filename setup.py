"""Build glue for geo3d's native ops (cuda_ext/ -> geo3d._C).

The extension is optional: if it cannot be built (no compiler), geo3d installs
anyway and runs on the `reference` backend; `geo3d info` says why. The CUDA
sources are added only where torch has CUDA and nvcc is found.
"""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


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
    sources = sorted(glob.glob("cuda_ext/*.cpp"))
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
            include_dirs=[os.path.join(ROOT, "cuda_ext", "include"), os.path.join(ROOT, "cuda_ext")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    else:
        sources += sorted(glob.glob("cuda_ext/*.cu"))
        ext = CUDAExtension(
            "geo3d._C",
            sources,
            include_dirs=[os.path.join(ROOT, "cuda_ext", "include"), os.path.join(ROOT, "cuda_ext")],
            define_macros=[("GEO3D_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-std=c++17"]},
            extra_link_args=["-fopenmp"],
        )
    ext.optional = True  # a failed native build leaves the reference backend, not a failed install
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=False)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
