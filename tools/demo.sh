#!/bin/bash
# demo.sh - the README's first command. On a fresh Debian 12 machine (as root): installs the
# packages that are missing, builds shmbroker, starts a broker on its built-in defaults, runs a
# small client that creates sessions for two tenants, shows them with shmctl, and stops the
# broker (which removes its segment: --unlink-on-exit).
#
#   bash tools/demo.sh
#
# Environment: SHMB_BUILD_DIR (default build), SHMB_NAME (default "default").
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -t 1 ]]; then
  step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  step() { printf '\n== %s\n' "$*"; }
fi

# ---- packages ----
pkgs=(build-essential cmake pkg-config liburcu-dev libcjson-dev libmicrohttpd-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  step "installing ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "demo.sh: missing packages (${missing[*]}); run as root or install them first" >&2
    exit 1
  fi
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

# ---- build (no test suite: the demo needs no Criterion) ----
build=${SHMB_BUILD_DIR:-build}
step "building into $build"
cmake -S . -B "$build" -DSHMB_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target shmbrokerd shmctl demo_client
brokerd=$build/broker/shmbrokerd
shmctl=$build/tools/shmctl
client=$build/tools/demo_client

# ---- start a broker on built-in defaults ----
tmp=$(mktemp -d)
broker=
cleanup() {
  if [[ -n $broker ]] && kill -0 "$broker" 2>/dev/null; then
    kill -TERM "$broker" 2>/dev/null || true
    wait "$broker" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

step "starting shmbrokerd (built-in defaults)"
# The broker writes "ready\n" to --ready-fd once it listens: wait for that, not for a sleep.
mkfifo "$tmp/ready"
exec 3<>"$tmp/ready"
"$brokerd" --foreground --ready-fd 3 --unlink-on-exit 2>"$tmp/broker.log" &
broker=$!
line=
for _ in $(seq 1 30); do
  if read -r -t 1 line <&3; then break; fi
  kill -0 "$broker" 2>/dev/null || break
done
exec 3>&-
if [[ $line != ready ]]; then
  echo "demo.sh: the broker did not start; its log:" >&2
  cat "$tmp/broker.log" >&2
  exit 1
fi
sed 's/^/  broker: /' "$tmp/broker.log"

step "demo_client: create three sessions for two tenants, open one, publish an event, set attributes"
"$client" "$tmp/sid"

step "shmctl status"
"$shmctl" status

step "shmctl sessions"
"$shmctl" sessions

step "shmctl sessions --tenant acme --json"
"$shmctl" sessions --tenant acme --json

step "shmctl show (the session, its events and its attributes)"
"$shmctl" show "$(cat "$tmp/sid")"

step "stopping the broker"
kill -TERM "$broker"
rc=0
wait "$broker" || rc=$?
broker=
sed 's/^/  broker: /' "$tmp/broker.log" | tail -n 3
echo "shmbrokerd exited with status $rc"
exit "$rc"
