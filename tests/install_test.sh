#!/bin/bash
# install_test.sh BUILD_DIR CONSUMER_DIR CC [SANITIZE]
# cmake --install into a temporary prefix, then check what was installed (libshmb.so and libshmb.a
# give only the shmb_* API to the outside) and build and run the consumer four times: with
# `pkg-config shmb`, with `pkg-config --static shmb` against libshmb.a, and with CMake
# find_package(shmb) + shmb::shmb and + shmb::shmb_static. The static consumers also define
# functions named like internal helpers of the library, which must not collide with them.
set -euo pipefail
build=$1 consumer=$(cd "$2" && pwd) cc=$3 sanitize=${4:-}
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

# Exported symbols: shmb_* only (nm -D: the dynamic symbols of the .so; nm -g: the global symbols
# the .a defines, which a program linking it could collide with).
so_syms=$(nm -D --defined-only "$libdir/libshmb.so" | awk '{print $3}')
a_syms=$(nm -g --defined-only "$libdir/libshmb.a" | awk 'NF == 3 {print $3}')
for lib in so a; do
  syms=${lib}_syms
  leaks=$(grep -v '^shmb_' <<<"${!syms}" || true)
  [[ -z $leaks ]] || fail "libshmb.$lib exports symbols other than shmb_*:" $leaks
  grep -qx shmb_attach <<<"${!syms}" || fail "libshmb.$lib does not define shmb_attach"
done

# A sanitizer build's library needs the sanitizer runtime in the consumer too.
extra=()
if [[ -n $sanitize ]]; then extra=(-fsanitize="$sanitize"); fi
export SHMB_RUNTIME_DIR=$work # an empty runtime dir: the consumer finds no broker
export LD_LIBRARY_PATH=$libdir

# The static consumer: consumer.c plus the program's own functions named like libshmb internals.
mkdir -p "$work/static" "$work/empty"
{
  echo "#include \"$consumer/consumer.c\""
  for f in seg_map ctl_call sid_parse evr_publish; do
    echo "int $f(void);"
    echo "int $f(void) { return 0; }"
  done
} >"$work/static/consumer.c"
sed -e 's/shmb::shmb)/shmb::shmb_static)/' "$consumer/CMakeLists.txt" >"$work/static/CMakeLists.txt"
grep -q shmb::shmb_static "$work/static/CMakeLists.txt" || fail "no shmb::shmb_static consumer"

# check_static BINARY WHAT: a static consumer runs without libshmb.so (not NEEDED, not findable).
check_static() {
  if readelf -d "$1" | grep -q 'NEEDED.*libshmb'; then
    echo "install test: $2 links libshmb.so, not libshmb.a" >&2
    return 1
  fi
  LD_LIBRARY_PATH=$work/empty "$1" || { echo "install test: $2 failed" >&2; return 1; }
}

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

echo "== pkg-config --static consumer"
# Not -static (Debian ships no libcjson.a): libshmb.a through -l:libshmb.a (-lshmb would pick the
# .so) with everything else `pkg-config --static` gives, i.e. Libs.private and Requires.private.
if flags=$(pkg-config --static --cflags --libs shmb); then
  echo "pkg-config --static shmb: $flags"
  sflags=${flags/-lshmb/-l:libshmb.a}
  if [[ $sflags == "$flags" ]]; then
    echo "install test: no -lshmb in '$flags'" >&2
    failed=1
  # shellcheck disable=SC2086
  elif "$cc" -std=c11 -Wall -Wextra -Werror "${extra[@]}" "$work/static/consumer.c" $sflags \
    -o "$work/c2"; then
    check_static "$work/c2" "the pkg-config --static consumer" || failed=1
  else
    echo "install test: the pkg-config --static consumer does not build" >&2
    failed=1
  fi
else
  echo "install test: pkg-config --static shmb failed" >&2
  failed=1
fi

cflags=""
if [[ -n $sanitize ]]; then cflags="-fsanitize=$sanitize"; fi
# cmake_consumer NAME SOURCE_DIR: configure and build it against the install prefix.
cmake_consumer() {
  if ! cmake -S "$2" -B "$work/b-$1" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_COMPILER="$cc" \
    -DCMAKE_C_FLAGS="$cflags" >"$work/configure-$1.log" 2>&1; then
    cat "$work/configure-$1.log"
    echo "install test: the find_package(shmb) $1 consumer does not configure" >&2
    return 1
  elif ! cmake --build "$work/b-$1" >"$work/build-$1.log" 2>&1; then
    cat "$work/build-$1.log"
    echo "install test: the find_package(shmb) $1 consumer does not build" >&2
    return 1
  fi
}

echo "== find_package consumer (shmb::shmb)"
if cmake_consumer shared "$consumer"; then
  "$work/b-shared/consumer" || { echo "install test: the shmb::shmb consumer failed" >&2; failed=1; }
else
  failed=1
fi

echo "== find_package consumer (shmb::shmb_static)"
if cmake_consumer static "$work/static"; then
  check_static "$work/b-static/consumer" "the shmb::shmb_static consumer" || failed=1
else
  failed=1
fi
# The Python module (client/python, when built): installed as the package shmb/ with its stubs,
# and importable from the installed tree alone: libshmb is linked into it, no LD_LIBRARY_PATH.
pymod=$(find "$prefix" -path '*/shmb/__init__.cpython-*.so' | head -n 1)
if [[ -n $pymod ]]; then
  echo "== Python module"
  pydir=$(dirname "$(dirname "$pymod")")
  for f in __init__.pyi py.typed; do
    [[ -e $pydir/shmb/$f ]] || { echo "install test: shmb/$f was not installed" >&2; failed=1; }
  done
  readelf -d "$pymod" | grep -q 'NEEDED.*libshmb' &&
    { echo "install test: the Python module needs libshmb.so" >&2; failed=1; }
  env -u LD_LIBRARY_PATH PYTHONPATH="$pydir" /usr/bin/python3 -c \
    'import shmb, sys; assert shmb.__file__.startswith(sys.argv[1]); print(shmb.__version__)' \
    "$pydir" || { echo "install test: the installed Python module does not import" >&2; failed=1; }
fi
((failed == 0)) || fail "failed (see above)"
echo "install test: ok"
