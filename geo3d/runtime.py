"""Process-level settings that long-running jobs (MD, relaxations) benefit from.

glibc serves every allocation above ~32 MiB with a fresh ``mmap`` and returns it
to the kernel on free. A potential evaluated on 10^4-10^5 atoms allocates
per-edge tensors of 50-500 MiB several times a step, so every step faults all
of that memory in again, 4 KiB at a time, and zero-fills it: at 11k Cu atoms
this was more than half of the step and made the cost per atom grow with the
system size. Keeping freed blocks in the heap makes later steps reuse them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch

_M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt's int argument takes

# The same settings for a process started fresh (glibc reads them at start-up): benchmarks give
# them to every peer's subprocess, so that no side pays for page faults the other does not.
RETAIN_FREED_MEMORY_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(_TRIM_THRESHOLD)}


@functools.cache
def retain_freed_memory() -> bool:
    """Ask glibc's malloc to keep large freed blocks for reuse (once per process).

    Sets ``M_MMAP_MAX = 0`` (large blocks come from the heap, not from one-off
    mappings) and a trim threshold of 2 GiB (the largest ``mallopt`` takes: up to
    that much freed memory is not handed back to the kernel). The process's resident memory then stays at its peak instead
    of oscillating; this suits one long simulation per process. Equivalent to
    starting Python with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``.

    Returns:
        True where the settings took effect (Linux with glibc), False elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    mmap = mallopt(_M_MMAP_MAX, 0) == 1
    return trim and mmap


def resolve_device(device: str | torch.device, where: str) -> torch.device:
    """``torch.device(device)``, checked: a CUDA device on a build or machine without one is a
    ``ValueError`` that says which device, where it was asked for and why it is not there."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{where}: device={device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise ValueError(
                f"{where}: device={device!r}, but this torch ({torch.__version__}) is a CPU-only build; "
                "install a CUDA build of torch or use device='cpu'"
            )
        if not torch.cuda.is_available():
            raise ValueError(f"{where}: device={device!r}, but no CUDA GPU is visible to this process")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"{where}: device={device!r}, but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif dev.type not in ("cpu", "meta", "mps", "xpu"):
        raise ValueError(f"{where}: device={device!r}: use 'cpu' or 'cuda'")
    return dev
