#!/bin/bash
# install_test.sh BUILD_DIR CONSUMER_DIR CC [SANITIZE]
# cmake --install into a temporary prefix, then check what was installed and build and run a
# consumer twice: with `pkg-config shmb` and with CMake find_package(shmb) + shmb::shmb.
set -euo pipefail
build=$1 consumer=$2 cc=$3 sanitize=${4:-}
prefix=$(mktemp -d /tmp/shmb-install.XXXXXX)
work=$(mktemp -d /tmp/shmb-consumer.XXXXXX)
trap 'rm -rf "$prefix" "$work"' EXIT

cmake --install "$build" --prefix "$prefix" >"$work/install.log"

fail() { echo "install test: $*" >&2; exit 1; }
for f in bin/shmbrokerd bin/shmctl include/shmb.h; do
  [[ -e $prefix/$f ]] || fail "$f was not installed"
done
[[ -e $prefix/include/internal.h ]] && fail "client/internal.h must not be installed"
pc=$(find "$prefix" -name shmb.pc | head -n 1)
[[ -n $pc ]] || fail "shmb.pc was not installed"
cfg=$(find "$prefix" -name shmbConfig.cmake | head -n 1)
[[ -n $cfg ]] || fail "shmbConfig.cmake was not installed"
libdir=$(dirname "$(dirname "$pc")")
ls "$libdir"/libshmb.so* >/dev/null 2>&1 || fail "libshmb.so was not installed in $libdir"
ls "$libdir"/libshmb.a >/dev/null 2>&1 || fail "libshmb.a was not installed in $libdir"

# A sanitizer build's library needs the sanitizer runtime in the consumer too.
extra=()
if [[ -n $sanitize ]]; then extra=(-fsanitize="$sanitize"); fi
export SHMB_RUNTIME_DIR=$work # an empty runtime dir: the consumer finds no broker
export LD_LIBRARY_PATH=$libdir

failed=0

echo "== pkg-config consumer"
export PKG_CONFIG_PATH=$(dirname "$pc")
if flags=$(pkg-config --cflags --libs shmb); then
  echo "pkg-config shmb: $flags"
  [[ $flags == *"-I$prefix/"* ]] ||
    echo "install test: shmb.pc does not point into the install prefix $prefix" >&2
  # shellcheck disable=SC2086
  if "$cc" -std=c11 -Wall -Wextra -Werror "${extra[@]}" "$consumer/consumer.c" $flags -o "$work/c1"; then
    "$work/c1" || { echo "install test: the pkg-config consumer failed" >&2; failed=1; }
  else
    echo "install test: the pkg-config consumer does not build" >&2
    failed=1
  fi
else
  echo "install test: pkg-config shmb failed" >&2
  failed=1
fi

echo "== find_package consumer"
cflags=""
if [[ -n $sanitize ]]; then cflags="-fsanitize=$sanitize"; fi
if ! cmake -S "$consumer" -B "$work/b" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_COMPILER="$cc" \
  -DCMAKE_C_FLAGS="$cflags" >"$work/configure.log" 2>&1; then
  cat "$work/configure.log"
  echo "install test: find_package(shmb) consumer does not configure" >&2
  failed=1
elif ! cmake --build "$work/b" >"$work/build.log" 2>&1; then
  cat "$work/build.log"
  echo "install test: find_package(shmb) consumer does not build" >&2
  failed=1
else
  "$work/b/consumer" || { echo "install test: the find_package consumer failed" >&2; failed=1; }
fi
((failed == 0)) || fail "failed (see above)"
echo "install test: ok"
