#!/usr/bin/env bash
# Quick start, command 2: the whole test suite — unit tests, the store conformance suite
# against a real etcd, and the end-to-end tests that run the real binaries against real
# etcd, ffmpeg and nginx-rtmp on 127.0.0.1. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
cargo build --workspace --bins
scripts/helm-check.sh
# Two test binaries at a time: each spawns etcd and pushcast processes of its own.
cargo test --workspace --no-fail-fast -- --test-threads=2
