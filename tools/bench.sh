#!/bin/bash
# bench.sh - the benchmark, in one command. On Debian 12 (as root, to install what is missing):
# installs the build packages and Redis (redis-server, libhiredis-dev), builds shmbroker in
# Release mode into build-bench, runs every scenario of tools/shmbench with its baselines (raw
# eventfds, a spinning cache line, raw shared-memory rings, Redis over loopback) and prints the
# table; the results also go to build-bench/bench-results.json. docs/performance.md explains the
# figures.
#
#   bash tools/bench.sh                  # the whole run (about 2 minutes on 2 cores)
#   bash tools/bench.sh --quick          # fewer samples; other arguments go to shmbench too
#
# Environment: SHMB_BENCH_BUILD_DIR (default build-bench), SHMB_BENCH_JSON (default
# <build dir>/bench-results.json).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

# ---- packages ----
need=(build-essential cmake pkg-config liburcu-dev libcjson-dev)
want=(redis-server libhiredis-dev) # without them the Redis rows are reported as skipped
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=()
for p in "${need[@]}" "${want[@]}"; do
  installed "$p" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    step "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    for p in "${need[@]}"; do
      if ! installed "$p"; then
        echo "bench.sh: missing $p; run as root or install it first" >&2
        exit 1
      fi
    done
    echo "bench.sh: ${missing[*]} missing (not root): the Redis rows will be skipped" >&2
  fi
fi

# ---- build (Release, no test suite) ----
build=${SHMB_BENCH_BUILD_DIR:-build-bench}
step "building into $build (Release)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSHMB_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target shmbrokerd shmbench >/dev/null

# ---- run ----
json=${SHMB_BENCH_JSON:-$build/bench-results.json}
# The commit measured goes into the JSON ("-dirty": the tree had uncommitted changes).
if [[ -z ${SHMB_BENCH_COMMIT:-} ]] && git rev-parse --git-dir >/dev/null 2>&1; then
  SHMB_BENCH_COMMIT=$(git rev-parse --short HEAD)
  git diff --quiet HEAD -- broker client common tools CMakeLists.txt || SHMB_BENCH_COMMIT+=-dirty
fi
export SHMB_BENCH_COMMIT=${SHMB_BENCH_COMMIT:-}
step "running shmbench (results: $json)"
# shmbench stops the brokers and the redis-server it starts, and removes their segments, also
# on SIGINT/SIGTERM (forwarded below); the EXIT trap is the last resort if it died outright.
"$build/tools/shmbench" --json "$json" "$@" &
bench_pid=$!
trap 'kill -TERM "$bench_pid" 2>/dev/null || true' INT TERM
trap 'rm -f /dev/shm/shmb.bench"$bench_pid"_* 2>/dev/null || true' EXIT
status=0
wait "$bench_pid" || status=$?
while kill -0 "$bench_pid" 2>/dev/null; do # wait returned early for a trapped signal
  status=0
  wait "$bench_pid" || status=$?
done
exit "$status"
