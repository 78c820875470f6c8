#!/bin/bash
# install_test.sh BUILD_DIR CONSUMER_DIR CC [SANITIZE]
# install_test.sh --fresh SOURCE_DIR
# cmake --install into a temporary prefix, then check what was installed (libshmb.so and libshmb.a
# give only the shmb_* API to the outside) and build and run the consumer four times: with
# `pkg-config shmb`, with `pkg-config --static shmb` against libshmb.a, and with CMake
# find_package(shmb) + shmb::shmb and + shmb::shmb_static. The static consumers also define
# functions named like internal helpers of the library, which must not collide with them.
#
# --fresh: what an operator does by hand (README "Build and install by hand"), on a copy of the
# source's tracked files: configure (Release, tests off) with only the required packages visible
# to pkg-config, which must succeed and say that the tests and shmb-mcpd are skipped; then
# configure with everything, build (-j2), install into a temporary prefix, and run the installed
# shmbrokerd, shmctl and shmb-mcpd with no LD_LIBRARY_PATH ($ORIGIN rpath): --version, --help, a
# broker started, pinged and stopped with shmctl; the bash completion; then uninstall with
# install_manifest.txt and check that nothing is left in the prefix.
set -euo pipefail

fail() { echo "install test: $*" >&2; exit 1; }

if [[ ${1:-} == --fresh ]]; then
  src=$(cd "$2" && pwd)
  work=$(mktemp -d /tmp/shmb-fresh.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  mkdir "$work/src" "$work/prefix" "$work/pc" "$work/run"
  chmod 700 "$work/run"
  if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    # The working tree's version of every tracked file (what a clone of this commit holds,
    # plus uncommitted edits), nothing untracked (no build directories, no node_modules).
    git -C "$src" ls-files -z | tar -C "$src" --null -T - -cf - | tar -C "$work/src" -xf -
  else
    tar -C "$src" --exclude='./build*' --exclude=node_modules -cf - . | tar -C "$work/src" -xf -
  fi
  unset LD_LIBRARY_PATH

  echo "== configure with only liburcu and cJSON visible (the README's required packages)"
  for m in liburcu libcjson; do
    pcf=$(pkg-config --variable=pcfiledir "$m")/$m.pc
    cp "$pcf" "$work/pc/"
  done
  PKG_CONFIG_LIBDIR=$work/pc cmake -S "$work/src" -B "$work/b-min" -DCMAKE_BUILD_TYPE=Release \
    >"$work/min.log" 2>&1 || { cat "$work/min.log"; fail "configure without the optional parts failed"; }
  grep -q "Criterion not found: the test suite is skipped" "$work/min.log" ||
    { cat "$work/min.log"; fail "no configure message about the skipped tests"; }
  grep -q "libmicrohttpd not found: shmb-mcpd is skipped" "$work/min.log" ||
    { cat "$work/min.log"; fail "no configure message about the skipped shmb-mcpd"; }

  echo "== configure, build (Release, tests off), install into $work/prefix"
  cmake -S "$work/src" -B "$work/b" -DCMAKE_BUILD_TYPE=Release -DSHMB_TESTS=OFF \
    -DCMAKE_INSTALL_PREFIX="$work/prefix" >"$work/configure.log" 2>&1 ||
    { cat "$work/configure.log"; fail "configure failed"; }
  cmake --build "$work/b" -j2 >"$work/build.log" 2>&1 || { tail -50 "$work/build.log"; fail "build failed"; }
  cmake --install "$work/b" >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "install failed"; }

  p=$work/prefix
  for bin in shmbrokerd shmctl shmb-mcpd; do
    [[ -x $p/bin/$bin ]] || fail "bin/$bin was not installed"
    "$p/bin/$bin" --version >"$work/out" 2>&1 || { cat "$work/out"; fail "$bin --version failed"; }
    grep -q "$(sed -n 's/^project(shmbroker VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")" \
      "$work/out" || { cat "$work/out"; fail "$bin --version does not print the project version"; }
    "$p/bin/$bin" --help >"$work/out" 2>&1 || { cat "$work/out"; fail "$bin --help failed"; }
    grep -qi usage "$work/out" || fail "$bin --help prints no usage"
  done
  readelf -d "$p/bin/shmb-mcpd" | grep -q 'R.*PATH.*\$ORIGIN/\.\./lib' ||
    fail "shmb-mcpd has no \$ORIGIN-relative RUNPATH: $(readelf -d "$p/bin/shmb-mcpd" | grep PATH)"

  echo "== run the installed broker and shmctl"
  export SHMB_RUNTIME_DIR=$work/run
  name=fresh$$
  "$p/bin/shmbrokerd" --name "$name" --max-sessions 16 --unlink-on-exit 2>"$work/broker.log" ||
    { cat "$work/broker.log"; fail "the installed shmbrokerd did not start"; }
  st=0
  "$p/bin/shmctl" --name "$name" ping >"$work/out" 2>&1 || st=$?
  [[ $st == 0 ]] || { cat "$work/out"; fail "installed shmctl ping: exit $st"; }
  "$p/bin/shmctl" --name "$name" status >"$work/out" 2>&1 || st=$?
  [[ $st == 0 ]] || { cat "$work/out"; fail "installed shmctl status: exit $st"; }
  "$p/bin/shmctl" --name "$name" stop >"$work/out" 2>&1 || st=$?
  [[ $st == 0 ]] || { cat "$work/out"; fail "installed shmctl stop: exit $st"; }
  "$p/bin/shmctl" --name "$name" ping >"$work/out" 2>&1 || st=$?
  [[ $st == 3 ]] || { cat "$work/out"; fail "shmctl ping after stop: exit $st, expected 3"; }
  [[ ! -e /dev/shm/shmb.$name ]] || fail "segment /dev/shm/shmb.$name left behind"

  for u in shmbrokerd.service shmbrokerd@.service; do
    grep -q "^ExecStart=$p/bin/shmbrokerd " "$p/lib/systemd/system/$u" ||
      fail "lib/systemd/system/$u missing or not starting $p/bin/shmbrokerd"
  done

  for m in man1/shmctl.1 man3/libshmb.3 man8/shmbrokerd.8; do
    [[ -f $p/share/man/$m ]] || fail "share/man/$m was not installed"
  done
  MANPATH=$p/share/man man -w 1 shmctl | grep -q "^$p/share/man/man1/shmctl.1" ||
    fail "man -w 1 shmctl does not find the installed page"

  echo "== bash completion"
  comp=$p/share/bash-completion/completions/shmctl
  [[ -f $comp ]] || fail "share/bash-completion/completions/shmctl was not installed"
  got=$(bash -c 'source "$1"; COMP_WORDS=(shmctl pi); COMP_CWORD=1; _shmctl; echo "${COMPREPLY[*]}"' \
    _ "$comp")
  [[ $got == ping ]] || fail "completion of 'shmctl pi' gave '$got', not 'ping'"

  echo "== uninstall with install_manifest.txt"
  xargs rm -f <"$work/b/install_manifest.txt"
  left=$(find "$p" -type f -o -type l)
  [[ -z $left ]] || fail "files left after removing install_manifest.txt's:" $left
  echo "install test (fresh): ok"
  exit 0
fi

build=$1 consumer=$(cd "$2" && pwd) cc=$3 sanitize=${4:-}
prefix=$(mktemp -d /tmp/shmb-install.XXXXXX)
work=$(mktemp -d /tmp/shmb-consumer.XXXXXX)
trap 'rm -rf "$prefix" "$work"' EXIT

cmake --install "$build" --prefix "$prefix" >"$work/install.log"

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
