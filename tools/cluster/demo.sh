#!/usr/bin/env bash
# tools/cluster/demo.sh - multi-host shmbroker on one machine: Redis, two nodes (shmbrokerd with
# its own name and node id, shmb-mcpd --redis, shmb-mirror) and HAProxy on free loopback ports,
# driven through HAProxy with the official MCP SDK client; node A is killed with kill -9
# mid-stream and its session resumes on node B from Redis; then A comes back and takes it back
# (docs/multi-host.md). cluster.mjs tells the story and checks every step; this script finds
# the programs, and kills every process group it started however the run ends.
#
# usage: tools/cluster/demo.sh [BUILD_DIR]     (default: build/ of this checkout)
# Needs redis-server, haproxy, node and the SDK (npm ci in tests/). Exit 0: every check held;
# 1: one failed (the logs of every process are printed); 77: a prerequisite is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}

export SHMB_BROKERD=${SHMB_BROKERD:-$build/broker/shmbrokerd}
export SHMB_SHMCTL=${SHMB_SHMCTL:-$build/tools/shmctl}
export SHMB_MCPD=${SHMB_MCPD:-$build/tools/mcp/shmb-mcpd}
export SHMB_MIRROR=${SHMB_MIRROR:-$build/tools/mirror/shmb-mirror}
export SHMB_NODE_MODULES=${SHMB_NODE_MODULES:-$root/tests/node_modules}
for p in "$SHMB_BROKERD" "$SHMB_SHMCTL" "$SHMB_MCPD" "$SHMB_MIRROR"; do
	[[ -x $p ]] || { echo "demo.sh: $p is not built" >&2; exit 77; }
done
for p in redis-server haproxy node; do
	command -v "$p" >/dev/null || { echo "demo.sh: $p is not installed" >&2; exit 77; }
done
[[ -d $SHMB_NODE_MODULES/@modelcontextprotocol/sdk ]] ||
	{ echo "demo.sh: no MCP SDK in $SHMB_NODE_MODULES (npm ci in tests/)" >&2; exit 77; }
if ! "$SHMB_MCPD" --redis 127.0.0.1:1 --help >/dev/null 2>&1; then
	echo "demo.sh: $SHMB_MCPD was built without --redis (hiredis)" >&2
	exit 77
fi

export CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/shmb-cluster.XXXXXX")
export CLUSTER_NAME="clu$$"
: >"$CLUSTER_DIR/pgids"
driver=
cleanup() {
	local rc=$?
	set +e
	[[ -n $driver ]] && kill -9 "$driver" 2>/dev/null
	while read -r g; do
		[[ -n $g ]] && kill -9 -- "-$g" 2>/dev/null
	done <"$CLUSTER_DIR/pgids"
	wait 2>/dev/null
	if ((rc != 0)); then
		for f in "$CLUSTER_DIR"/*.log; do
			[[ -e $f ]] || continue
			echo "--- $(basename "$f") (last 40 lines)"
			tail -n 40 "$f"
		done
	fi
	rm -f "/dev/shm/shmb.${CLUSTER_NAME}n1" "/dev/shm/shmb.${CLUSTER_NAME}n2"
	rm -rf "$CLUSTER_DIR"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

node "$here/cluster.mjs" &
driver=$!
wait "$driver"
