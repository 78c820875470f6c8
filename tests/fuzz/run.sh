#!/bin/bash
# run.sh - runs the libFuzzer harnesses of tests/fuzz.
#
#   bash tests/fuzz/run.sh BUILD_DIR [SECONDS]     fuzz each harness for SECONDS (default 30)
#   bash tests/fuzz/run.sh --replay FUZZER DIR     run every input of DIR once (ctest)
#
# BUILD_DIR is a build configured with -DCMAKE_C_COMPILER=clang -DSHMB_FUZZ=ON. Each harness
# starts from its committed seed corpus (tests/fuzz/corpus/<harness>/) and writes what it
# discovers into BUILD_DIR/fuzz-corpus/<harness>/, never into the source tree (to keep a new
# input, copy it into the seed corpus and commit it). A crash, a leak, a timeout (-timeout, 10 s
# per input) or an out-of-memory stops the harness with its reproducer saved as
# BUILD_DIR/fuzz-artifacts/<harness>-crash-*; reproduce with `BUILD_DIR/tests/fuzz/<harness>
# FILE`. The script exits 1 if any harness failed, after running all of them.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
opts=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1)

if [[ ${1:-} == --replay ]]; then
  fuzzer=$2 dir=$3
  shopt -s nullglob
  files=("$dir"/*)
  ((${#files[@]})) || { echo "run.sh: no inputs in $dir" >&2; exit 1; }
  exec "$fuzzer" "${opts[@]}" "${files[@]}"
fi

build=${1:?usage: run.sh BUILD_DIR [SECONDS] | run.sh --replay FUZZER DIR}
secs=${2:-30}
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
mkdir -p "$build/fuzz-artifacts"
failed=()
for seeds in "$here"/corpus/*/; do
  name=$(basename "$seeds")
  bin="$build/tests/fuzz/$name"
  [[ -x $bin ]] || { echo "run.sh: $bin is not built" >&2; failed+=("$name"); continue; }
  work="$build/fuzz-corpus/$name"
  mkdir -p "$work"
  if [[ $name == fuzz_header ]]; then
    # The intact header of this build, as a seed that survives layout changes.
    : >"$build/fuzz-empty-input"
    SHMB_FUZZ_DUMP_HEADER="$work/intact-this-build" "$bin" "$build/fuzz-empty-input" \
      >/dev/null 2>&1
  fi
  dict=()
  [[ -f $here/$name.dict ]] && dict=(-dict="$here/$name.dict")
  echo "== fuzzing $name for ${secs}s"
  if ! "$bin" "${opts[@]}" "${dict[@]}" -max_total_time="$secs" \
      -artifact_prefix="$build/fuzz-artifacts/$name-" "$work" "$seeds"; then
    failed+=("$name")
  fi
done
if ((${#failed[@]})); then
  echo "== fuzzing failed: ${failed[*]} (reproducers in $build/fuzz-artifacts)"
  exit 1
fi
echo "== fuzzing passed"
