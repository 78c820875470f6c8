#!/bin/bash
# man_test.sh SOURCE_DIR - the manual pages of docs/man/ (shmbrokerd.8, shmctl.1, libshmb.3):
# `mandoc -T lint -W warning` (Debian: mandoc) finds nothing, or without mandoc `man --warnings`
# finds nothing; libshmb.3 names every function shmb.h exports, and shmctl.1 every command of
# shmctl's table (tools/shmctl.c), so a call or a command added without its documentation fails.
set -euo pipefail
src=$1
fail() { echo "man test: $*" >&2; exit 1; }
pages=("$src/docs/man/shmbrokerd.8" "$src/docs/man/shmctl.1" "$src/docs/man/libshmb.3"
  "$src/docs/man/shmb-mirror.1")
for p in "${pages[@]}"; do
  [[ -f $p ]] || fail "$p is missing"
  if command -v mandoc >/dev/null; then
    out=$(mandoc -T lint -W warning "$p" 2>&1) || true
    [[ -z $out ]] || { echo "$out"; fail "mandoc -T lint: $(basename "$p") has warnings"; }
  elif command -v man >/dev/null; then
    out=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$p" 2>&1 >/dev/null) || true
    [[ -z $out ]] || { echo "$out"; fail "man --warnings: $(basename "$p") has warnings"; }
  else
    echo "man test: SKIPPED: neither mandoc nor man (Debian: apt-get install mandoc)"
    exit 77
  fi
  echo "lint $(basename "$p"): clean"
done
missing=()
for f in $(grep -oE '^SHMB_API [^(]*\(' "$src/client/shmb.h" | grep -oE 'shmb_[a-z_]+'); do
  # In the SYNOPSIS ("f(") and described (".BR f ()" or ".BR f "(), " g ()").
  { grep -q "$f(" "$src/docs/man/libshmb.3" && grep -qE "^\.BR( [a-z_]+ \"\(\), \")? $f " \
    "$src/docs/man/libshmb.3"; } || missing+=("$f")
done
((${#missing[@]} == 0)) || fail "libshmb.3 does not document: ${missing[*]}"
for c in $(grep -oE '^\s*\{ "[a-z]+", shmctl_cmd_' "$src/tools/shmctl.c" | grep -oE '"[a-z]+"' | tr -d '"'); do
  grep -qE "^(\\\\fB|\.BI? )$c\b" "$src/docs/man/shmctl.1" || missing+=("$c")
done
((${#missing[@]} == 0)) || fail "shmctl.1 does not document the command(s): ${missing[*]}"
echo "man test: ok"
