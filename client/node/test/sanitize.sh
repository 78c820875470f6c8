#!/bin/bash
# sanitize.sh - the Node addon under AddressSanitizer + UndefinedBehaviorSanitizer, by hand (not
# in ctest: node is not built with the sanitizers, so the runtimes are preloaded into it, which
# depends on the node build; the project's own ASan build does not make the addon).
#
#   bash client/node/test/sanitize.sh [BUILD_DIR]     (default build; its libshmb.a and shmbrokerd)
#
# Compiles src/shmb_node.c with -fsanitize=address,undefined against BUILD_DIR's libshmb.a, then
# runs the API, hostile, multi-host and glue tests (and the 4-worker end to end when the SDK is
# installed) with that addon and the runtimes preloaded. Any report fails the run (halt_on_error).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$here/../../build}" && pwd)
out=$(mktemp -d /tmp/shmb-node-asan.XXXXXX)
trap 'rm -rf "$out"' EXIT
uv=/usr/include/node
[[ -f $uv/uv.h ]] || uv=/usr/include
gcc -shared -fPIC -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
  -fno-sanitize-recover=undefined -std=gnu11 -I/usr/include/node -I"$uv" -I"$here/.." \
  -DNODE_GYP_MODULE_NAME=shmb "$here/src/shmb_node.c" "$build/client/libshmb.a" -lcjson \
  -o "$out/shmb.node"
tests=("$here/test/api.test.mjs" "$here/test/hostile.test.mjs" "$here/test/multihost.test.mjs")
[[ -d $here/node_modules ]] && tests+=("$here/test/mcp_glue.test.mjs" "$here/test/e2e_cluster.test.mjs")
SHMB_NODE_ADDON="$out/shmb.node" SHMB_BROKERD="$build/broker/shmbrokerd" \
  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
  node --test "${tests[@]}"
