#!/usr/bin/env bash
# Usage: no_test_hooks.sh FILE...
#        no_test_hooks.sh --install BUILD_DIR PREFIX FILE...
# Succeeds when no FILE (an archive, a shared library or a program) carries the test hooks of
# base/test_hooks.h: no strong definition in namespace repatch::test and no REPATCH_TEST_DISABLE,
# the variable the hooks read. The inline no-op stubs of a build without hooks (inject, disabled)
# may stay in an unoptimised build: weak in an archive, and local in librepatch.so, whose version
# script makes every symbol it does not export local. They do nothing; a build with the hooks also
# defines set_injection and handler_name and reads the variable, which are caught. With --install it first installs BUILD_DIR into PREFIX, and the
# FILEs are relative to PREFIX. Exit status: 0 clean, 1 hooks found (each named as
# "test hooks in FILE"), 2 a file missing or the install failed.
set -u
if [ "${1:-}" = "--install" ]; then
  build=$2 prefix=$3
  shift 3
  rm -rf "$prefix"
  if ! cmake --install "$build" --prefix "$prefix" >/dev/null; then
    echo "cmake --install $build --prefix $prefix failed"
    exit 2
  fi
  files=()
  for f in "$@"; do files+=("$prefix/$f"); done
  set -- "${files[@]}"
fi
[ $# -gt 0 ] || { echo "usage: no_test_hooks.sh [--install BUILD_DIR PREFIX] FILE..."; exit 2; }
status=0
for f in "$@"; do
  if [ ! -f "$f" ]; then
    echo "missing: $f"
    exit 2
  fi
  # nm: "address type name"; weak (W, V) definitions are the stubs, and so are local (t) ones of
  # the two stubs' names; everything else counts.
  symbols=$(nm -C --defined-only "$f" 2>/dev/null | grep -E '^[0-9a-f]* +[^WVwv] +repatch::test::' |
    grep -Ev '^[0-9a-f]* +t +repatch::test::(inject|disabled)\(')
  strings=$(grep -ac 'REPATCH_TEST_DISABLE' "$f")
  if [ -n "$symbols" ] || [ "$strings" -ne 0 ]; then
    echo "test hooks in $f:"
    [ -n "$symbols" ] && echo "$symbols" | head -n 10
    [ "$strings" -ne 0 ] && echo "  REPATCH_TEST_DISABLE appears"
    status=1
  else
    echo "no test hooks in $f"
  fi
done
exit $status
