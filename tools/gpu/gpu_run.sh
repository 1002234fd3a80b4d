#!/usr/bin/env bash
# Several gpu_session.sh stages in one call of the device tool, each under its own time limit,
# then every log packed into one archive (the tool returns at most 8 files from $OUT):
#
#   bash tools/gpu/gpu_run.sh build:240 test-new:150 bench-seg:200
#
# A stage that runs past its limit is stopped and the next one starts; the archive
# ($OUT/logs-<first stage>.tar.gz) is written even then. The wheel and kernels.sha1 that the
# build stage leaves in $OUT stay beside it, so a later call on a fresh machine can run
# `install DIR` instead of compiling again.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
first=""
for spec in "$@"; do
  stage=${spec%%:*}
  limit=${spec#*:}
  [ "$limit" = "$spec" ] && limit=300
  [ -z "$first" ] && first=$stage
  echo "=== $stage (limit ${limit}s) $(date +%T)"
  start=$(date +%s)
  # shellcheck disable=SC2086
  timeout -k 10 "$limit" bash tools/gpu/gpu_session.sh ${stage//+/ }
  rc=$?
  echo "=== $stage rc=$rc in $(( $(date +%s) - start ))s"
done
(cd "$out" && find . -maxdepth 1 -type f \( -name '*.log' -o -name '*.json' -o -name '*.md' -o -name '*.png' \) \
   -printf '%f\n' | tar czf "logs-${first:-none}.tar.gz" -T - && \
   find . -maxdepth 1 -type f \( -name '*.log' -o -name '*.json' -o -name '*.md' -o -name '*.png' \) -delete)
ls -la "$out"
