#!/usr/bin/env bash
# `make sanitize`: every CPU test, built with AddressSanitizer and UndefinedBehaviorSanitizer, in its own tree
# (build-san/) so that it never mixes objects with the normal build. The sources are copied there with their
# times (so a rerun rebuilds only what changed), built without CUDA, and tested from there (the tests start
# that tree's ./train and ./sample). Any sanitizer report fails the run.
#   scripts/sanitize.sh                   build and run every CPU test binary
#   scripts/sanitize.sh build/test_train  build and run only these
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build-san/src
mkdir -p "$tree"
# The sources: what git tracks plus new files it does not ignore (or, outside git, everything but outputs).
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -co --exclude-standard -z | grep -zv '^build-san/' | tar --null -T - -cf - | tar -xf - -C "$tree"
else
  tar --exclude=./build --exclude=./build-san --exclude=./runs --exclude='./data/*.bin' -cf - . | tar -xf - -C "$tree"
fi
export CXXFLAGS="-O1 -g -fno-omit-frame-pointer -march=native -fsanitize=address,undefined -fno-sanitize-recover=all"
export NVCC=""   # CPU only: the CUDA objects are not instrumented
# halt at the first error; abort (not exit) on UB so doctest reports it; no leak check of OpenBLAS's threads
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
if [ $# -gt 0 ]; then bins=("$@"); else
  bins=($(make -C "$tree" -s --no-print-directory print-test-bins | grep -o 'build/test_[a-z_]*' | grep -v test_cuda))
fi
# The test binaries and the programs they start; no benchmarks.
make -C "$tree" -j"$(nproc)" "${bins[@]}" train sample >build-san/build.log 2>&1 || { tail -n 40 build-san/build.log; exit 1; }
cd "$tree"
bash test/run_all.sh "${bins[@]}"
