#!/usr/bin/env bash
# Instructions per op of each site_cost case, counted by callgrind.
#
#   bench/callgrind_site_cost.sh <build-dir> [iterations]
#
# Runs `site_cost --loop=<case> --iterations=N` and then 2N under callgrind and prints
# (Ir(2N) - Ir(N)) / N: boot, the site check and the loop's entry and exit cost the same in both
# runs and cancel, leaving what one trip round the loop costs (the op plus the loop's own
# add/cmp/jne, the same in every case). Collection is also limited to the loop functions
# (--toggle-collect), so the totals stay small and the subtraction is over a few hundred
# instructions of fixed cost, not millions.
set -euo pipefail

usage() {
  echo "usage: $0 <build-dir> [iterations (default 1000000)]" >&2
  exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
build_dir=$1
n=${2:-1000000}
[[ $n =~ ^[1-9][0-9]*$ ]] || usage
bin=$build_dir/bench/site_cost

if ! command -v valgrind >/dev/null 2>&1; then
  echo "$0: valgrind not found; install it (Debian: apt-get install valgrind)" >&2
  exit 1
fi
if [[ ! -x $bin ]]; then
  echo "$0: $bin not found; build it: cmake --build $build_dir --target site_cost" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Total Ir of one callgrind run of one case.
count() {
  local case=$1 iterations=$2 out=$work/callgrind.$1.$2
  if ! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='site_cost_loop_*' \
    --callgrind-out-file="$out" "$bin" --loop="$case" --iterations="$iterations" \
    >"$out.log" 2>&1; then
    echo "$0: callgrind run of case $case failed:" >&2
    cat "$out.log" >&2
    exit 1
  fi
  local total
  total=$(awk '/^(summary|totals):/ { print $2; exit }' "$out")
  if [[ -z $total ]]; then
    echo "$0: no instruction total in $out" >&2
    exit 1
  fi
  echo "$total"
}

declare -A per_op
printf '%-16s %14s %14s %12s\n' case "Ir(N=$n)" "Ir(2N)" "Ir per op"
for case in a_site_indirect b_site_call c_site_inline d_hand_inline e_hand_call f_site_thunk \
  g_cxx_call; do
  ir1=$(count "$case" "$n")
  ir2=$(count "$case" $((2 * n)))
  per_op[$case]=$(awk -v a="$ir1" -v b="$ir2" -v n="$n" 'BEGIN { printf "%.3f", (b - a) / n }')
  printf '%-16s %14d %14d %12s\n' "$case" "$ir1" "$ir2" "${per_op[$case]}"
done

# The instruction-count target: the inline site runs exactly the hand-written instruction count.
echo
for pair in c_site_inline:d_hand_inline b_site_call:e_hand_call a_site_indirect:e_hand_call \
  f_site_thunk:g_cxx_call; do
  lhs=${pair%%:*} rhs=${pair##*:}
  if [[ ${per_op[$lhs]} == "${per_op[$rhs]}" ]]; then verdict=equal; else verdict=different; fi
  printf '%-16s vs %-14s %8s vs %8s  %s\n' "$lhs" "$rhs" "${per_op[$lhs]}" "${per_op[$rhs]}" \
    "$verdict"
done
