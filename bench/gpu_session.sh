#!/usr/bin/env bash
# The GPU checks of a session that is lent a GPU machine, one stage per call (each call of the
# device tool may run 10 minutes):
#
#   bash bench/gpu_session.sh build    # compile for the GPU at hand, print build_info
#   bash bench/gpu_session.sh test     # the whole test suite, CUDA included
#   bash bench/gpu_session.sh bench    # pytest-benchmark on CUDA + report table (copy rate, % copy)
#   bash bench/gpu_session.sh bench-diffusion   # the diffusion losses (64x4x64x64, 16x16x128x128)
#   bash bench/gpu_session.sh main     # python -m fastgenloss on CUDA
#
# Logs go to $OUT (the device tool's folder that comes back) or bench/results/; name them
# <gpu>-<date>-<stage> and commit them under bench/results/. The GPU machines are offline and
# have torch, scikit-build-core, cmake and ninja preinstalled, hence --no-build-isolation
# --no-deps. Never run on zeros, never change the card's settings (see the device METHOD.md).
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: gpu_session.sh build|test|bench|bench-diffusion|main}
out=${OUT:-bench/results}
mkdir -p "$out"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '-' || echo gpu)
tag="$out/${gpu}-$(date +%F)"
log() { tee -a "$tag-$stage.log"; }

case "$stage" in
  build)
    { nvidia-smi; python -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } 2>&1 | log
    # Only the architecture of the card at hand: half the compile time of the default 80;90.
    arch=$(python -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}{n}')")
    FASTGENLOSS_CUDA=ON FASTGENLOSS_CUDA_ARCHS=$arch \
      python -m pip install --no-build-isolation --no-deps -e . -C build-dir=build/gpu 2>&1 | tail -5 | log
    python -c "import fastgenloss; print(fastgenloss.build_info())" 2>&1 | log
    ;;
  test)
    # Known (2026-11-22, H100 machine: Ubuntu GCC 13.3 + torch 2.11): a C++ argument check that
    # throws from our library crashes the process (segfault in std::ostream formatting inside
    # _C). That test runs alone first, so a crash cannot hide the rest of the suite.
    python -m pytest -q -p no:cacheprovider tests/test_errors.py -k test_direct_op_call_is_checked_in_cpp 2>&1 | tail -3 | log || true
    python -m pytest -q -p no:cacheprovider tests -k "not test_direct_op_call_is_checked_in_cpp" 2>&1 | tail -40 | log
    ;;
  bench)
    FGL_BENCH_DEVICE=cuda python -m pytest bench/bench_pixel.py -q -p no:cacheprovider \
      --benchmark-max-time=0.2 --benchmark-json="$tag-bench.json" 2>&1 | tail -3 | log
    python bench/report.py "$tag-bench.json" > "$tag-bench.md"
    grep -E "copy rate|fwd\+bwd" "$tag-bench.md" | head -60
    ;;
  bench-diffusion)
    FGL_BENCH_DEVICE=cuda FGL_BENCH_SIZES=16M python -m pytest bench/bench_pixel.py::test_copy_bandwidth \
      bench/bench_diffusion.py -q -p no:cacheprovider --benchmark-max-time=0.2 \
      --benchmark-json="$tag-bench-diffusion.json" 2>&1 | tail -3 | log
    python bench/report.py "$tag-bench-diffusion.json" > "$tag-bench-diffusion.md"
    grep -E "copy rate|fwd\+bwd" "$tag-bench-diffusion.md" | head -60
    ;;
  main)
    python -m fastgenloss --device cuda --plot "$tag-speedup.png" 2>&1 | log
    ;;
  *)
    echo "unknown stage $stage" >&2
    exit 2
    ;;
esac
