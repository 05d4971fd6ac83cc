#!/usr/bin/env bash
# The one test command (README, CI): installs what is missing on Debian, builds, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
make -j"$(nproc)" all
make test
