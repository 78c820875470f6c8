#!/bin/bash
# systemd_test.sh BUILD_DIR BINDIR - the systemd units (broker/systemd/, docs/operations.md):
# installed by cmake --install into lib/systemd/system, and `systemd-analyze verify` finds
# nothing to say about shmbrokerd.service and an instance of shmbrokerd@.service (ExecStart is
# pointed from the configured BINDIR to the temporary prefix, where the binary is). Then
# `systemd-analyze security --offline` rates the sandbox: at most 3.0 ("OK") is required.
# Skipped (exit 77, ctest SKIP_RETURN_CODE) when systemd-analyze is absent (Debian: systemd).
set -euo pipefail
build=$1 bindir=$2
if ! command -v systemd-analyze >/dev/null; then
  echo "systemd test: SKIPPED: systemd-analyze not found (Debian: apt-get install systemd)"
  exit 77
fi
fail() { echo "systemd test: $*" >&2; exit 1; }
work=$(mktemp -d /tmp/shmb-systemd.XXXXXX)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/p" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log"; fail "cmake --install $build failed (is everything built?)"; }
src=$work/p/lib/systemd/system
mkdir "$work/units"
for u in shmbrokerd.service shmbrokerd@.service; do
  [[ -f $src/$u ]] || fail "lib/systemd/system/$u was not installed"
  grep -q "^ExecStart=$bindir/shmbrokerd " "$src/$u" || fail "$u: ExecStart is not $bindir/shmbrokerd"
  sed "s|^ExecStart=$bindir/|ExecStart=$work/p/bin/|" "$src/$u" >"$work/units/$u"
done
ln -s shmbrokerd@.service "$work/units/shmbrokerd@demo.service"
man=yes
[[ -d $work/p/share/man ]] && export MANPATH=$work/p/share/man: || man=no
for u in shmbrokerd.service shmbrokerd@demo.service; do
  if ! out=$(systemd-analyze verify --man=$man "$work/units/$u" 2>&1) || [[ -n $out ]]; then
    echo "$out"
    fail "systemd-analyze verify $u is not clean"
  fi
  echo "verify $u: clean"
done
sec=$(systemd-analyze security --offline=yes "$work/units/shmbrokerd.service" 2>&1 | tail -n 1)
echo "security: $sec"
score=$(grep -o 'exposure level.*: [0-9.]*' <<<"$sec" | grep -o '[0-9.]*$' || true)
[[ -n $score ]] || fail "no exposure level in: $sec"
awk -v s="$score" 'BEGIN { exit !(s <= 3.0) }' || fail "sandbox exposure $score > 3.0"
echo "systemd test: ok"
