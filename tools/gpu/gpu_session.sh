#!/usr/bin/env bash
# The GPU checks of a session that is lent a GPU machine, one stage per call (each call of the
# device tool may run 10 minutes):
#
#   bash tools/gpu/gpu_session.sh build    # compile for the GPU at hand (a wheel), print build_info
#   bash tools/gpu/gpu_session.sh install DIR   # install a wheel an earlier build returned
#   bash tools/gpu/gpu_session.sh test     # the whole test suite, CUDA included
#   bash tools/gpu/gpu_session.sh test-new # the CUDA cases of the seg / style suites (new kernels on)
#   bash tools/gpu/gpu_session.sh crash-bt # native backtrace of the C++-error crash (cuda-gdb)
#   bash tools/gpu/gpu_session.sh bench    # pytest-benchmark on CUDA + report table (copy rate, % copy)
#   bash tools/gpu/gpu_session.sh bench-diffusion   # the diffusion losses (64x4x64x64, 16x16x128x128)
#   bash tools/gpu/gpu_session.sh bench-style       # Gram / style loss on VGG-19 feature shapes
#   bash tools/gpu/gpu_session.sh bench-gram        # the same style shapes, hand-written Gram kernel on
#   bash tools/gpu/gpu_session.sh bench-seg         # segmentation losses, CUDA kernel on (opt-in)
#   bash tools/gpu/gpu_session.sh bench-seg-ops     # fastgenloss alone, kernel off (PyTorch-ops path)
#   bash tools/gpu/gpu_session.sh device-times      # device time and launches per step (torch.profiler)
#   bash tools/gpu/gpu_session.sh main     # python -m fastgenloss on CUDA
#
# tools/gpu/gpu_run.sh chains stages in one call, each under its own limit. On 2026-11-23 a cold
# build took three calls (230 + 300 + 325 s, a stage stopped at its limit restarts the
# unfinished objects): seg_cpu.cpp's per-variant AVX2 kernels were one translation unit of
# several minutes. They are now 8 files (and pixel_cpu.cpp 4) that compile in parallel, the
# longest ~1 min of a core here; the cold build has not been timed on a GPU machine since, so
# still give the first call's build stage 450 s and nothing else.
#
# Logs go to $OUT (the device tool's folder that comes back) or bench/results/; name them
# <gpu>-<date>-<stage> and commit them under bench/results/. The GPU machines are offline and
# have torch, scikit-build-core, cmake and ninja preinstalled, hence --no-build-isolation
# --no-deps. Never run on zeros, never change the card's settings (see the device METHOD.md).
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: gpu_session.sh build|install DIR|test|test-new|crash-bt|bench-seg-ops|bench|bench-diffusion|bench-style|bench-gram|bench-seg|device-times|main}
out=${OUT:-bench/results}
mkdir -p "$out"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '-' || echo gpu)
tag="$out/${gpu}-$(date +%F)"
log() { tee -a "$tag-$stage.log"; }
kernels_sum() { find csrc CMakeLists.txt -type f | LC_ALL=C sort | xargs cat | sha1sum | cut -c1-40; }

case "$stage" in
  build)
    { nvidia-smi; python -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } 2>&1 | log
    # Only the architecture of the card at hand: half the compile time of the default 80;90.
    arch=$(python -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}{n}')")
    # A wheel, not an editable install: it comes back in $OUT, and a later call on a fresh machine
    # with unchanged kernels installs it (stage install) instead of compiling again.
    start=$(date +%s)
    FASTGENLOSS_CUDA=ON FASTGENLOSS_CUDA_ARCHS=$arch \
      python -m pip wheel --no-build-isolation --no-deps . -C build-dir=build/gpu -w "$out" 2>&1 | tail -3 | log
    echo "build took $(( $(date +%s) - start )) s" | log
    kernels_sum > "$out/kernels.sha1"
    python -m pip install -q --no-deps --force-reinstall "$out"/fastgenloss-*.whl 2>&1 | log
    (cd /tmp && python -c "import fastgenloss; print(fastgenloss.__file__); print(fastgenloss.build_info())") 2>&1 | log
    ;;
  install)
    # A wheel an earlier build stage returned, carried in (bash tools/gpu/gpu_session.sh install DIR),
    # then the working tree's Python files over it: valid while the C++/CUDA sources are those
    # the wheel was built from (DIR/kernels.sha1), refused otherwise.
    dir=${2:?wheel folder}
    if [ "$(kernels_sum)" != "$(cat "$dir/kernels.sha1")" ]; then
      echo "csrc/ or CMakeLists.txt changed since $dir's wheel was built: run the build stage" | log
      exit 1
    fi
    python -m pip install -q --no-deps --force-reinstall "$dir"/fastgenloss-*.whl 2>&1 | log
    site=$(cd /tmp && python -c "import fastgenloss, os; print(os.path.dirname(fastgenloss.__file__))")
    cp python/fastgenloss/*.py "$site"/
    (cd /tmp && python -c "import fastgenloss; print(fastgenloss.__file__); print(fastgenloss.build_info())") 2>&1 | log
    ;;
  test)
    # Known (2026-11-22, H100 machine: Ubuntu GCC 13.3 + torch 2.11): a C++ argument check that
    # throws from our library crashes the process (segfault in std::ostream formatting inside
    # _C). That test runs alone first, so a crash cannot hide the rest of the suite.
    python -m pytest -q -p no:cacheprovider tests/pixel/test_pixel_errors.py -k test_direct_op_call_is_checked_in_cpp 2>&1 | tail -3 | log || true
    # Eight workers (the machine has 16 cores); the whole log goes to $tag-test-full.log.
    python -m pytest -q -p no:cacheprovider -n "${FGL_TEST_N:-8}" tests -k "${FGL_TEST_K:-not test_direct_op_call_is_checked_in_cpp}" \
      > "$tag-test-full.log" 2>&1 || true
    tail -40 "$tag-test-full.log" | log
    ;;
  test-new)
    # The CUDA cases of the suites whose CUDA kernels have not yet run on a GPU (the seg_stats
    # kernel, the hand-written Gram/style kernel): their fixtures switch the kernels on.
    python -m pytest -q -p no:cacheprovider -n "${FGL_TEST_N:-8}" -rf tests/segmentation/test_segmentation.py \
      tests/style/test_style.py tests/segmentation/test_segmentation_distributed.py -k "${FGL_TEST_K:-cuda}" \
      > "$tag-test-new-full.log" 2>&1 || true
    tail -60 "$tag-test-new-full.log" | log
    ;;
  crash-bt)
    # The C++-error crash of this image (see bench/results/*-2026-11-23-NOTES.md): a native
    # backtrace of the first crashing test under cuda-gdb (gdb is not installed there).
    # One direct op call with a bad shape (the smallest reproduction), then: where the fault is
    # (symbol, the faulting instructions, the stack pointer's alignment), which libstdc++ /
    # libgcc_s the process loaded, and whether _C.so carries its own copies of libstdc++'s
    # stream templates (an earlier note saw the fault "in a copy of _M_insert<long> in _C").
    cat > /tmp/fgl_crash.py <<'PY'
import torch, fastgenloss
torch.ops.fastgenloss.pixel_fwd(torch.randn(4), torch.randn(3), None, 1.0, 0.0, 0.0, 0.0, 0.0,
                                1e-3, 1.0, 1.0, 1, False)
PY
    so=$(cd /tmp && python -c "import fastgenloss._C as m; print(m.__file__)")
    { echo "== _C: $so"; ldd "$so" | grep -E "stdc|gcc_s|gomp|torch_cpu|c10" || true
      echo "== stream template definitions inside _C (T/W = defined here)"
      nm -C "$so" | grep -E "_M_insert<|__ostream_insert|num_put" | grep -v " U " | head -20 || true
      echo "== g++ / libstdc++"; g++ --version | head -1 || true; g++ -print-file-name=libstdc++.so.6 || true
      (cd /tmp && python -c "import fastgenloss; print(fastgenloss.build_info())") || true; } 2>&1 | log
    cuda-gdb -batch -ex run -ex bt -ex "info symbol \$pc" -ex "x/6i \$pc" -ex "p/x \$rsp" \
      -ex "info registers rip rsp rbp rdi rsi" -ex "info sharedlibrary" \
      --args python /tmp/fgl_crash.py 2>&1 | tail -150 | log || true
    python -X faulthandler /tmp/fgl_crash.py 2>&1 | tail -5 | log || true
    ;;
  bench)
    FGL_BENCH_DEVICE=cuda python -m pytest bench/bench_pixel.py -q -p no:cacheprovider \
      --benchmark-max-time=0.2 --benchmark-json="$tag-bench.json" 2>&1 | tail -3 | log
    python bench/report.py "$tag-bench.json" > "$tag-bench.md"
    grep -E "copy rate|fwd\+bwd" "$tag-bench.md" | head -60
    ;;
  bench-diffusion)
    FGL_BENCH_DEVICE=cuda FGL_BENCH_SIZES=16M FGL_BENCH_LATENTS=64x4x64x64,16x16x128x128,4x16x16x128x128 \
      python -m pytest bench/bench_pixel.py::test_copy_bandwidth bench/bench_diffusion.py -q -p no:cacheprovider --benchmark-max-time=0.2 \
      --benchmark-json="$tag-bench-diffusion.json" 2>&1 | tail -3 | log
    python bench/report.py "$tag-bench-diffusion.json" > "$tag-bench-diffusion.md"
    grep -E "copy rate|fwd\+bwd" "$tag-bench-diffusion.md" | head -60
    ;;
  bench-style)
    FGL_BENCH_DEVICE=cuda python -m pytest bench/bench_style.py -q -p no:cacheprovider \
      --benchmark-max-time=0.2 --benchmark-json="$tag-bench-style.json" 2>&1 | tail -3 | log
    python bench/report.py "$tag-bench-style.json" > "$tag-bench-style.md"
    grep -E "fwd\+bwd" "$tag-bench-style.md" | head -40
    ;;
  bench-gram)
    # Gram / style with the hand-written CUDA Gram kernel switched on (opt-in until this stage
    # and the test stage have validated it): compare with bench-style's cuBLAS table, shape by
    # shape, to choose which shapes take it.
    FGL_BENCH_DEVICE=cuda FASTGENLOSS_GRAM_CUDA_KERNEL=1 python -m pytest bench/bench_style.py -k test_style \
      -q -p no:cacheprovider --benchmark-max-time=0.2 --benchmark-json="$tag-bench-gram.json" 2>&1 \
      | tail -3 | log
    python bench/report.py "$tag-bench-gram.json" > "$tag-bench-gram.md"
    grep -E "fwd\+bwd" "$tag-bench-gram.md" | head -40
    ;;
  bench-seg)
    # The segmentation losses with the CUDA kernel switched on (opt-in until this stage and the
    # test stage have validated it on a GPU), against smp / MONAI where installed.
    FGL_BENCH_DEVICE=cuda FASTGENLOSS_SEG_CUDA_KERNEL=1 FASTGENLOSS_SEG_CUDA_COMBINE=1 python -m pytest bench/bench_segmentation.py \
      -q -p no:cacheprovider --benchmark-max-time=0.2 --benchmark-json="$tag-bench-seg.json" 2>&1 \
      | tail -3 | log
    python bench/report.py "$tag-bench-seg.json" > "$tag-bench-seg.md"
    grep -E "fwd\+bwd" "$tag-bench-seg.md" | head -40
    ;;
  bench-seg-ops)
    # fastgenloss alone with the kernel off (the PyTorch-ops path on CUDA): the baseline that
    # decides whether the kernel becomes the default.
    FGL_BENCH_DEVICE=cuda FASTGENLOSS_SEG_CUDA_KERNEL=0 FGL_BENCH_COMPILE=0 python -m pytest \
      bench/bench_segmentation.py -k fastgenloss -q -p no:cacheprovider --benchmark-max-time=0.2 \
      --benchmark-json="$tag-bench-seg-ops.json" 2>&1 | tail -3 | log
    python bench/report.py "$tag-bench-seg-ops.json" > "$tag-bench-seg-ops.md"
    grep -E "fwd\+bwd" "$tag-bench-seg-ops.md" | head -40
    ;;
  device-times)
    # FGL_DT_ARGS: more device_times.py options (--cases, --impls); FGL_DT_TAG names the table
    python tools/gpu/device_times.py --out "$tag-device-times${FGL_DT_TAG:-}.md" ${FGL_DT_ARGS:-} 2>&1 \
      | grep -v "^USDT\|profiler_st" | log
    ;;
  main)
    python -m fastgenloss --device cuda --plot "$tag-speedup.png" 2>&1 | log
    ;;
  *)
    echo "unknown stage $stage" >&2
    exit 2
    ;;
esac
