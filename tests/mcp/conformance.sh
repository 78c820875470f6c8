#!/bin/bash
# conformance.sh - the MCP conformance suite (@modelcontextprotocol/conformance, pinned in
# tests/package.json) against shmb-mcpd: without SCENARIO arguments the whole suite (`server
# --suite all`, 32 scenarios) in one run, every scenario of which must pass; with them, each
# named scenario on its own.
#
#   bash tests/mcp/conformance.sh SHMB_MCPD SHMB_BROKERD [SCENARIO ...]
#
# docs/mcp-server.md records what the scenarios check of the server.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd) # tests/, where node_modules is
mcpd=${1:?usage: conformance.sh SHMB_MCPD SHMB_BROKERD [SCENARIO ...]}
brokerd=${2:?usage: conformance.sh SHMB_MCPD SHMB_BROKERD [SCENARIO ...]}
shift 2
scenarios=("$@") # none: the whole suite (--suite all), every scenario of it must pass
conf=$here/node_modules/@modelcontextprotocol/conformance/dist/index.js
[[ -f $conf ]] || { echo "conformance.sh: run 'npm ci' in tests/ first" >&2; exit 1; }
# On Debian 12's Node 18 the suite needs a global File (node18-compat.cjs says why).
node=(node --require "$here/mcp/node18-compat.cjs" "$conf")

dir=$(mktemp -d /tmp/shmb-mcpc.XXXXXX)
export SHMB_RUNTIME_DIR=$dir
"$mcpd" --port 0 --port-file "$dir/port" --workers 2 --name "conf$$" --broker "$brokerd" \
  --broker-arg --unlink-on-exit \
    --broker-arg --max-sessions --broker-arg 256 2>"$dir/server.log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 400); do [[ -s $dir/port ]] && break; sleep 0.05; done
[[ -s $dir/port ]] || { echo "shmb-mcpd did not start"; cat "$dir/server.log"; exit 1; }
url="http://127.0.0.1:$(cat "$dir/port")/mcp"

failed=()
if ((${#scenarios[@]} == 0)); then
  # --suite all: its 32 server scenarios; each must be listed with a check mark, none with a
  # cross, and the total must say 0 failed (docs/mcp-server.md: all 32 pass since issue 14).
  out=$(cd "$dir" && timeout 300 "${node[@]}" server --url "$url" --suite all 2>&1) || true
  summary=$(sed -n '/=== SUMMARY ===/,$p' <<<"$out")
  passed=$(grep -c '^✓ ' <<<"$summary" || true)
  echo "$summary"
  if ((passed != 32)) || grep -q '^✗ ' <<<"$summary" ||
    ! grep -qE '^Total: [0-9]+ passed, 0 failed' <<<"$summary"; then
    echo "FAIL --suite all: $passed of 32 scenarios passed"
    grep -vE '^\s*$' <<<"$out" | grep -iE 'fail|error' | head -n 40
    failed+=(suite-all)
  fi
  scenarios=(suite-all)
fi
for s in "${scenarios[@]}"; do
  [[ $s == suite-all ]] && continue
  # Its exit status and its summary line ("Passed: n/n, 0 failed") must both say so.
  if out=$(cd "$dir" && timeout 120 "${node[@]}" server --url "$url" --scenario "$s" 2>&1) &&
    grep -qE 'Passed: [0-9]+/[0-9]+, 0 failed' <<<"$out"; then
    echo "ok   $s: $(grep -E 'Passed|passed' <<<"$out" | tail -n 1)"
  else
    echo "FAIL $s"
    echo "$out" | tail -n 40
    failed+=("$s")
  fi
done
kill -TERM $pid
wait $pid || true
if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$dir/server.log"; then
  echo "FAIL sanitizer report from shmb-mcpd"
  failed+=(sanitizer)
fi
if ((${#failed[@]})); then
  echo "== conformance failed: ${failed[*]}; server log:"
  tail -n 50 "$dir/server.log"
  exit 1
fi
if [[ ${scenarios[*]} == suite-all ]]; then
  echo "== conformance: all 32 scenarios of --suite all passed"
else
  echo "== conformance: ${#scenarios[@]} scenarios passed"
fi
