#!/usr/bin/env bash
# The one test command (README, CI): installs what is missing on Debian, builds, runs every test, then every CPU
# test under the sanitizers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
make -j"$(nproc)" all
make test
# Every CPU test again under AddressSanitizer and UBSan (build-san/; about 9 minutes on 2 cores from scratch).
make sanitize
