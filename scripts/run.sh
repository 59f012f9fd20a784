#!/usr/bin/env bash
# Quick start, command 1: runs pushcast standalone (controller + worker, embedded store).
# Extra arguments go to pushcast (see `scripts/run.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh build
exec cargo run --release -- "$@"
