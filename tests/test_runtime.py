"""geo3d.runtime: malloc settings for long simulations (checked in a fresh process: they are process-wide)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

PROBE = r"""
import json, resource, sys, torch
from geo3d.runtime import retain_freed_memory

def faults_of_fresh_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(64 * 2**20 // 8, dtype=torch.float64)
    t.fill_(1.0)  # touch every page
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of_fresh_block()
default = faults_of_fresh_block()
applied = retain_freed_memory()
faults_of_fresh_block()
retained = faults_of_fresh_block()
print(json.dumps({"applied": applied, "default": default, "retained": retained}))
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)
def test_freed_blocks_are_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["applied"] is True
    # 64 MiB is above glibc's mmap threshold: by default every block is a fresh mapping
    # (16k 4-KiB pages to fault in, fewer with huge pages); retained, the freed block is reused.
    assert r["default"] > 500, r
    assert r["retained"] < 50, r
