#!/bin/bash
# valgrind.sh - valgrind memcheck over unit and quick tests (CI runs it on the fault-injection build, build-test).
#
#   bash tests/valgrind.sh BUILD_DIR [TEST ...]     default: test_evring test_protocol test_session
#
# Criterion runs every test in a worker it re-executes, and the harness execs shmbrokerd and
# shmctl, so valgrind follows exec (--trace-children=yes): the tests, the broker and shmctl are
# all checked. Children the tests fork without exec (h_child_start) leave through _exit() with
# their parent's heap, so they are not reported (--child-silent-after-fork=yes). Criterion hands
# a test's result over before its worker exits, so valgrind's exit status never reaches ctest:
# instead each process writes its own log and any error in any log (invalid access, use of
# uninitialised memory, bad free, a definite leak) fails the run. The logs of the failing
# processes are printed. valgrind runs one thread at a time; with its default (unfair) lock a
# thread spinning on a lock-free structure can keep the lock while the thread it waits for never
# runs (test_evring's concurrent publishers then time out), so the threads are scheduled
# round-robin (--fair-sched=yes). valgrind's warnings about system calls it does not know (pidfd_open:
# the broker falls back to polling) are not errors.
set -uo pipefail
build=${1:?usage: valgrind.sh BUILD_DIR [TEST ...]}
shift
tests=("$@")
((${#tests[@]})) || tests=(test_evring test_protocol test_session)
command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind is not installed" >&2; exit 1; }

logs=$(mktemp -d /tmp/shmb-valgrind.XXXXXX)
failed=()
for t in "${tests[@]}"; do
  bin="$build/tests/$t"
  [[ -x $bin ]] || { echo "valgrind.sh: $bin is not built" >&2; failed+=("$t"); continue; }
  mkdir -p "$logs/$t"
  start=$SECONDS
  valgrind -q --tool=memcheck --fair-sched=yes --leak-check=full --show-leak-kinds=definite \
    --errors-for-leak-kinds=definite --trace-children=yes \
    --child-silent-after-fork=yes --log-file="$logs/$t/%p.log" "$bin" --jobs 1 >"$logs/$t.out" 2>&1
  rc=$?
  bad=$(grep -l '^==[0-9]*== ' "$logs/$t"/*.log 2>/dev/null)
  echo "== valgrind $t: exit $rc, $(ls "$logs/$t" | wc -l) processes checked, $((SECONDS - start))s"
  if ((rc != 0)); then
    tail -n 30 "$logs/$t.out"
    failed+=("$t")
  fi
  if [[ -n $bad ]]; then
    for f in $bad; do
      echo "-- $f"
      grep '^==[0-9]*== ' "$f" | head -n 60
    done
    failed+=("$t")
  fi
done
if ((${#failed[@]})); then
  echo "== valgrind found problems in: ${failed[*]} (logs in $logs)"
  exit 1
fi
rm -rf "$logs"
echo "== valgrind clean"
