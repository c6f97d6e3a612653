#!/usr/bin/env bash
# Usage: expect_failure.sh SECONDS TEST_NAME COMMAND...
# Runs COMMAND, a GoogleTest binary filtered to TEST_NAME, and succeeds only if the test started
# and then failed: a failed expectation, death by a signal, or still running after SECONDS (then
# it is killed). A run that never reached the test (a misspelt REPATCH_TEST_DISABLE name exits
# with status 2 before main; a missing binary) proves nothing and fails this script. Used to show
# that a hazard test fails with its handler off.
set -u
limit=$1
name=$2
shift 2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
timeout --signal=KILL "$limit" "$@" >"$log" 2>&1
status=$?
if ! grep -qF "[ RUN      ] $name" "$log"; then
  echo "the test $name never started (exit status $status):"
  tail -n 30 "$log"
  exit 1
fi
if [ "$status" -eq 0 ]; then
  echo "expected $name to fail, but it passed:"
  tail -n 30 "$log"
  exit 1
fi
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "failed as expected: no progress within ${limit}s (killed)"
elif [ "$status" -gt 128 ]; then
  echo "failed as expected: killed by signal $((status - 128))"
elif grep -qF "[  FAILED  ] $name" "$log"; then
  echo "failed as expected: a broken expectation"
else
  echo "$name exited with status $status without a reported failure:"
  tail -n 30 "$log"
  exit 1
fi
tail -n 8 "$log"
exit 0
