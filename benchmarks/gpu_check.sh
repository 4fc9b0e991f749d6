#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (the `device` tool): builds geo3d with CUDA,
# runs every CUDA and cudasim test, and times the fused TP convolution against e3nn (and
# cuEquivariance where it imports), writing $OUT/gpu_check.log and $OUT/gpu_results.md.
# Sized for ~8 minutes on an H100 machine (16 cores): build ~3, tests ~2-3, timings ~1.
#
#   There:  bash benchmarks/gpu_check.sh          (device run, timeout_s 540)
#   Here:   GEO3D_GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh
#           a dry run without a GPU: builds without CUDA into a scratch copy, runs the
#           cudasim tests and the timing script on the simulator (slow numbers, same code).
#
# The device image has torch (CUDA), e3nn, torch-geometric, pytest and ninja; the kernel
# tests import nothing else from geo3d's dependencies. Wheels carried in .whl/ (see the
# device README) are installed to /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/geo3d_gpu_check}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
RESULTS=$OUT/gpu_results.md
PY=${PYTHON:-python3}
DRY=${GEO3D_GPU_CHECK_DRY:-0}
: >"$LOG"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
status=0

if ls .whl/*.whl >/dev/null 2>&1; then
  say "installing carried wheels"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >>"$LOG" 2>&1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

SRC=$PWD
if [ "$DRY" = "1" ]; then
  # Never touch the checkout's own build: work in a scratch copy of the tracked files.
  SRC=$(mktemp -d)/geo3d
  git ls-files -z | xargs -0 -I{} cp --parents {} "$SRC" 2>/dev/null || cp -r . "$SRC"
  export GEO3D_NO_CUDA=1
fi
cd "$SRC"
export PYTHONPATH=$SRC${PYTHONPATH:+:$PYTHONPATH}

say "building (GEO3D_NINJA=1, sm_90)"
{ $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null; } | tee -a "$LOG"
if ! GEO3D_NINJA=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
  timeout 300 $PY setup.py -q build_ext --inplace >>"$LOG" 2>&1; then
  say "build failed (see $LOG)"
  status=1
fi
$PY -c "from geo3d.ops import backend_status; [print(f'{k:10s} {v}') for k, v in backend_status().items()]" | tee -a "$LOG"

say "tests: pytest -m 'cuda or cudasim'"
TESTS="tests/test_cuda_build.py tests/test_tensor_product_cuda.py tests/test_point_ops_cuda.py tests/test_cudasim.py tests/test_cudasim_graph.py"
if ! timeout 300 $PY -m pytest -q -p no:cacheprovider -m "cuda or cudasim" -rfE $TESTS --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee -a "$LOG" | tail -5; then
  status=1
fi

say "timings"
if [ "$DRY" = "1" ]; then
  TIMING="--device cpu --backend cudasim --sizes 100 --repeats 2"
else
  TIMING="--device cuda --backend cuda --sizes 5000,20000 --repeats 10"
fi
: >"$RESULTS"
timeout 180 $PY benchmarks/gpu_conv.py $TIMING --out "$RESULTS" >>"$LOG" 2>&1 || { say "timing failed"; status=1; }
grep -h "passed\|failed" "$LOG" | tail -2 >>"$RESULTS"
cat "$RESULTS"
say "done, status $status"
exit $status
