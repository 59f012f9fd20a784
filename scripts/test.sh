#!/usr/bin/env bash
# Quick start, command 2: the whole test suite — unit tests, the store conformance suite
# against a real etcd, and the end-to-end tests that run the real binaries against real
# etcd, ffmpeg and nginx-rtmp on 127.0.0.1. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
scripts/helm-check.sh
# The end-to-end tests (tests/e2e) start the binaries Cargo builds with them. Two tests
# at a time: each spawns etcd and pushcast processes of its own.
cargo test --workspace --no-fail-fast -- --test-threads=2
# The fan-out benchmark in a small, quick form (any build: its checks, not its figures),
# so it cannot rot: every phase, every destination check.
FANOUT_SMOKE=1 FANOUT_N=5 FANOUT_SECONDS=4 FANOUT_WARMUP_SECONDS=3 FANOUT_PROBES=1 \
  cargo test --bench fanout -- --bench
# The control-plane benchmark, small (its checks: every task created and listed).
CP_SMOKE=1 CP_SIZES=200 CP_SECONDS=2 CP_LISTS=2 cargo test --bench control_plane -- --bench
