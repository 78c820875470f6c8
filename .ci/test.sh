#!/bin/bash
# test.sh - the README's second command: runs the whole test suite.
#
#   bash .ci/test.sh
#
# Installs the packages that are missing (as root, Debian 12), configures a build with the
# test-only fault-injection points compiled in, builds, and runs every test with ctest; the MCP
# end-to-end tests need Node.js and the npm packages pinned in tests/package-lock.json and, for
# the Node binding (client/node), client/node/package-lock.json (npm ci in both).
# Environment:
#   SHMB_BUILD_DIR   build directory (default build-test)
#   SHMB_CMAKE_ARGS  extra configure arguments, e.g. -DSHMB_SANITIZE=address,undefined
#   SHMB_CTEST_ARGS  extra ctest arguments, e.g. "-L quick" for the quick tests only
#   SHMB_SKIP_MCP=1  no Node.js, no npm download: every test but the MCP end-to-end ones (-LE mcp)
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(build-essential g++ cmake pkg-config liburcu-dev libcjson-dev libcriterion-dev libmicrohttpd-dev
  curl python3-dev python3-pytest gunicorn python3-uvicorn systemd mandoc python3-prometheus-client
  libhiredis-dev redis-server haproxy nginx-light)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# The MCP end-to-end tests run on Node.js (18 or later): Debian's, unless one is installed.
skip_mcp=${SHMB_SKIP_MCP:-0}
if [[ $skip_mcp != 1 ]]; then
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  # The Node addon (client/node) builds against node's own headers: Debian ships them in
  # libnode-dev (NodeSource's nodejs package has them already).
  [[ -f /usr/include/node/node_api.h ]] || missing+=(libnode-dev)
fi
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: missing packages (${missing[*]}); run as root or install them first" >&2
    exit 1
  fi
  echo "== installing ${missing[*]}"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

# The pinned MCP SDK and conformance suite (tests/package-lock.json), for tests/mcp.
if [[ $skip_mcp != 1 ]] && [[ ! -f tests/node_modules/.package-lock.json ||
  tests/package-lock.json -nt tests/node_modules/.package-lock.json ]]; then
  echo "== npm ci (tests/)"
  (cd tests && npm ci --no-audit --no-fund)
fi
# The Node binding's own pinned packages (client/node/package-lock.json: the MCP SDK its glue and
# example use).
if [[ $skip_mcp != 1 ]] && [[ ! -f client/node/node_modules/.package-lock.json ||
  client/node/package-lock.json -nt client/node/node_modules/.package-lock.json ]]; then
  echo "== npm ci (client/node/)"
  (cd client/node && npm ci --no-audit --no-fund)
fi

build=${SHMB_BUILD_DIR:-build-test}
jobs=$(nproc)
# shellcheck disable=SC2086
cmake -S . -B "$build" -DSHMB_FAULT_INJECTION=ON -DSHMB_WERROR=ON ${SHMB_CMAKE_ARGS:-}
cmake --build "$build" -j"$jobs"
mcp_args=()
[[ $skip_mcp == 1 ]] && mcp_args=(-LE mcp)
# shellcheck disable=SC2086
ctest --test-dir "$build" --output-on-failure -j"$jobs" "${mcp_args[@]}" ${SHMB_CTEST_ARGS:-}
