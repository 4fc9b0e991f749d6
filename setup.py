"""Build glue for geo3d's native ops (cuda_ext/ -> geo3d._C).

The extension is optional: if it cannot be built (no compiler), geo3d installs
anyway and runs on the `reference` backend; `geo3d info` says why. The CUDA
sources are added only where torch has CUDA and nvcc is found.
"""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # torch is installed first by the Makefile; without it, no native ops
        return [], {}
    # -ffp-contract=off: no fused multiply-adds, so CPU and CUDA round (and bin) identically.
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off"]
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
