#!/usr/bin/env bash
# Usage: expect_failure.sh SECONDS COMMAND...
# Runs COMMAND and succeeds only if it fails: a nonzero exit, death by a signal, or still running
# after SECONDS (then it is killed). Used to show that a hazard test fails with its handler off.
set -u
limit=$1
shift
log=$(mktemp)
trap 'rm -f "$log"' EXIT
timeout --signal=KILL "$limit" "$@" >"$log" 2>&1
status=$?
if [ "$status" -eq 0 ]; then
  echo "expected a failure, but the test passed:"
  tail -n 30 "$log"
  exit 1
fi
case $status in
  124 | 137) echo "failed as expected: no progress within ${limit}s (killed)" ;;
  *) echo "failed as expected: exit status $status" ;;
esac
tail -n 5 "$log"
exit 0
