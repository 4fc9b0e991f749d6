"""Do the cudasim tests catch real kernel bugs? Break each .cu file on purpose and see.

Each mutation edits one line of a copy of cuda_ext/ (an off-by-one index, a removed
barrier, a shortened warp reduction), builds the simulator from the copy (ninja keeps
the objects the edit does not touch), and runs the tests that exercise that file with
``GEO3D_CUDASIM_LIBRARY`` pointing at the mutated build. A mutation is *caught* when at
least one test fails. The table goes to stdout and, with ``--out``, replaces the
"cudasim mutations" section of benchmarks/RESULTS.md.

    python benchmarks/cudasim_mutations.py --out benchmarks/RESULTS.md   # ~1 min a mutation on 1 core
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

# Kernel files, relative to cuda_ext/.
TP = "tensor_product/tensor_product_cuda_kernels.cu"
RG = "radius_graph/radius_graph_cuda_kernels.cu"
PO = "point_ops/point_ops_cuda_kernels.cu"
TP_TESTS = [
    "tests/test_cudasim.py",
    "-k",
    "not selftest and not misuse and not atomics and not barrier_orders",
]
RG_TESTS = ["tests/test_cudasim_graph.py", "-k", "radius_graph"]
PO_TESTS = ["tests/test_cudasim_graph.py", "-k", "knn or fps"]


@dataclass
class Mutation:
    file: str
    kind: str
    what: str
    old: str
    new: str
    tests: list[str]


MUTATIONS = [
    Mutation(
        TP,
        "off-by-one",
        "warp_copy stages one element too few of every row",
        "for (int c = lane; c < n; c += kWarpSize) dst[c] = src[c];",
        "for (int c = lane; c < n - 1; c += kWarpSize) dst[c] = src[c];",
        TP_TESTS,
    ),
    Mutation(
        TP,
        "off-by-one",
        "the shared-weight unit of an item starts one item late",
        "const int64_t first = one ? unit : unit * args.items / args.units;",
        "const int64_t first = one ? unit : unit * args.items / args.units + 1;",
        TP_TESTS,
    ),
    Mutation(
        TP,
        "removed barrier",
        "no __syncwarp after the lanes fill the contracted CG block S",
        "    S[n] = s;\n  }\n  __syncwarp();",
        "    S[n] = s;\n  }",
        TP_TESTS,
    ),
    Mutation(
        TP,
        "removed barrier",
        "no __syncwarp between the edges of a receiver (forward)",
        "      __syncwarp();  // every lane is done with the previous edge's rows; acc zeroed\n",
        "",
        TP_TESTS,
    ),
    Mutation(
        TP,
        "removed barrier",
        "no __syncwarp before the in2 gradient reads a[] (lane 0 writes it)",
        "        __syncwarp();  // a complete\n",
        "",
        TP_TESTS,
    ),
    Mutation(
        TP,
        "warp reduction",
        "the xor butterfly stops one level early",
        "for (int m = kWarpSize / 2; m > 0; m >>= 1)",
        "for (int m = kWarpSize / 2; m > 1; m >>= 1)",
        TP_TESTS,
    ),
    Mutation(
        RG,
        "off-by-one",
        "bin_kernel skips the last point",
        "  const int64_t i = thread_index();\n  if (i >= n) return;\n  const GraphPlan& g = plans[graph[i]];\n  int b[3];",
        "  const int64_t i = thread_index();\n  if (i >= n - 1) return;\n  const GraphPlan& g = plans[graph[i]];\n  int b[3];",
        RG_TESTS,
    ),
    Mutation(
        RG,
        "off-by-one",
        "the bounds reduction starts at stride blockDim/4",
        "for (int stride = blockDim.x / 2; stride > 0; stride /= 2)",
        "for (int stride = blockDim.x / 4; stride > 0; stride /= 2)",
        RG_TESTS,
    ),
    Mutation(
        RG,
        "removed barrier",
        "no __syncthreads between the per-thread bounds and the tree reduction",
        "    s_hi[k][threadIdx.x] = h[k];\n  }\n  __syncthreads();",
        "    s_hi[k][threadIdx.x] = h[k];\n  }",
        RG_TESTS,
    ),
    Mutation(
        RG,
        "removed barrier",
        "no __syncthreads between the levels of the bounds reduction",
        "      }\n    }\n    __syncthreads();\n  }",
        "      }\n    }\n  }",
        RG_TESTS,
    ),
    Mutation(
        PO,
        "off-by-one",
        "the kNN tile drops the graph's last point",
        "const int count = min(kKnnTile, n - t0);",
        "const int count = min(kKnnTile, n - t0 - 1);",
        PO_TESTS,
    ),
    Mutation(
        PO,
        "off-by-one",
        "FPS initialises one distance too few",
        "for (int i = threadIdx.x; i < n; i += blockDim.x) dist[i] = INFINITY;",
        "for (int i = threadIdx.x; i < n - 1; i += blockDim.x) dist[i] = INFINITY;",
        PO_TESTS,
    ),
    Mutation(
        PO,
        "removed barrier",
        "no __syncthreads before a kNN tile is overwritten",
        "    __syncthreads();  // everyone is done with the previous tile\n",
        "",
        PO_TESTS,
    ),
    Mutation(
        PO,
        "removed barrier",
        "no __syncthreads after a kNN tile is staged",
        "      tz[t] = c[2];\n    }\n    __syncthreads();",
        "      tz[t] = c[2];\n    }",
        PO_TESTS,
    ),
    Mutation(
        PO,
        "removed barrier",
        "no __syncthreads after thread 0 publishes FPS's pick",
        "    __syncthreads();  // `chosen` is read below; warp_d is rewritten only after the next barrier\n",
        "",
        PO_TESTS,
    ),
    Mutation(
        PO,
        "warp reduction",
        "FPS's shuffle-down reduction stops one level early",
        "for (int off = kWarp / 2; off > 0; off /= 2)",
        "for (int off = kWarp / 2; off > 1; off /= 2)",
        PO_TESTS,
    ),
]


def _build_module():
    spec = importlib.util.spec_from_file_location("cudasim_build", ROOT / "cuda_ext" / "cudasim" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(copy: Path, build_dir: Path) -> Path:
    """Builds geo3d._cudasim from the cuda_ext copy in a subprocess (it must not load here)."""
    b = _build_module()
    sources = b.sources(str(ROOT), str(build_dir / "src"), cuda_ext=str(copy))
    script = (
        "from torch.utils.cpp_extension import load\n"
        f"load('_cudasim', {sources!r}, extra_include_paths={b.include_dirs(str(ROOT), cuda_ext=str(copy))!r}, "
        f"extra_cflags={b.CXX_FLAGS!r}, build_directory={str(build_dir)!r}, verbose=False)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    return build_dir / "_cudasim.so"


def run_tests(library: Path, tests: list[str]) -> tuple[bool, str]:
    """(all passed, the first failure's line)."""
    env = dict(os.environ, GEO3D_CUDASIM_LIBRARY=str(library), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "cudasim", *tests]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED") or ln.startswith("ERROR")]
    return proc.returncode == 0, (failed[0][:150] if failed else proc.stdout.strip().splitlines()[-1][:150])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the table into this RESULTS.md")
    ap.add_argument("--only", type=int, nargs="*", help="mutation numbers to run (default: all)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="geo3d_mutations_"))
    copy = work / "cuda_ext"
    shutil.copytree(ROOT / "cuda_ext", copy)
    build_dir = work / "build"
    build_dir.mkdir()
    t0 = time.time()
    lib = build(copy, build_dir)
    ok, line = run_tests(lib, ["tests/test_cudasim.py", "tests/test_cudasim_graph.py"])
    if not ok:
        raise SystemExit(f"the unmutated kernels fail their tests: {line}")
    print(f"unmutated build and tests pass ({time.time() - t0:.0f} s)", flush=True)
    rows = []
    for n, m in enumerate(MUTATIONS, 1):
        if args.only and n not in args.only:
            continue
        path = copy / m.file
        original = path.read_text()
        if original.count(m.old) != 1:
            raise SystemExit(
                f"mutation {n}: the text to replace occurs {original.count(m.old)} times in {m.file}"
            )
        path.write_text(original.replace(m.old, m.new))
        t = time.time()
        try:
            lib = build(copy, build_dir)
            passed, line = run_tests(lib, m.tests)
            verdict = "**not caught**" if passed else "caught"
            detail = "" if passed else line.replace("|", "/")
        except subprocess.CalledProcessError as exc:
            verdict, detail = "build failed", exc.stderr.strip().splitlines()[-1][:120] if exc.stderr else ""
        finally:
            path.write_text(original)
        rows.append((n, m, verdict, detail))
        print(
            f"{n:2d} {m.file:46s} {m.kind:16s} {verdict:14s} {time.time() - t:5.0f} s  {m.what}", flush=True
        )
    # Control: the same pipeline on the restored copy must pass again (a mutation "caught"
    # because the build or the library load broke would show here).
    lib = build(copy, build_dir)
    control_ok, control_line = run_tests(lib, ["tests/test_cudasim.py", "tests/test_cudasim_graph.py"])
    shutil.rmtree(work, ignore_errors=True)
    if not control_ok:
        raise SystemExit(f"the restored kernels fail after the mutations: {control_line}")

    caught = sum(v == "caught" for _, _, v, _ in rows)
    lines = [
        "## cudasim mutations (`python benchmarks/cudasim_mutations.py --out benchmarks/RESULTS.md`)",
        "",
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores. Each "
        "row edits one line of a copy of a kernel file, rebuilds the simulator and runs the cudasim tests "
        "of that file; caught = at least one test fails (the first failure shown). "
        f"{caught} of {len(rows)} caught. Before the mutations and after them (restored copy, same build "
        "directory) every cudasim test passes.",
        "",
        "| # | file | kind | mutation | verdict | first failure |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n, m, verdict, detail in rows:
        lines.append(f"| {n} | `{m.file}` | {m.kind} | {m.what} | {verdict} | {detail} |")
    lines += [
        "",
        f"- versions: Python {platform.python_version()}, gcc {_gcc_version()}; no GPU (the kernels run "
        "on geo3d's CPU simulator of the CUDA execution model).",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        write_section(args.out, table, "cudasim-mutations")


def _gcc_version() -> str:
    try:
        return subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
