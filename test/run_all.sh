#!/usr/bin/env bash
# Runs every test binary given on the command line, then prints one summary line over all of them:
# "N passed, N failed" counts test cases (doctest's own counts, or a shell test's "[shell] test cases:" line in
# doctest's form), and the exit status is non-zero if any program failed.
set -u
passed=0; failed=0; bad_bins=()
for bin in "$@"; do
  echo "== $bin"
  out=$("./$bin" 2>&1); rc=$?
  echo "$out" | tail -n 25
  line=$(echo "$out" | grep -E '^\[(doctest|shell)\] test cases:' | tail -n 1)
  p=$(echo "$line" | sed -nE 's/.*\| *([0-9]+) passed.*/\1/p'); f=$(echo "$line" | sed -nE 's/.*\| *([0-9]+) failed.*/\1/p')
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  if [ $rc -ne 0 ]; then bad_bins+=("$bin"); [ "${f:-0}" = 0 ] && failed=$((failed + 1)); fi
done
echo
[ ${#bad_bins[@]} -gt 0 ] && echo "failing test programs: ${bad_bins[*]}"
echo "tests: $passed passed, $failed failed"
[ ${#bad_bins[@]} -eq 0 ]
