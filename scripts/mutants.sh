#!/usr/bin/env bash
# Test strength of the pure decision modules: cargo-mutants changes their code one mutant
# at a time and runs the unit tests, which must notice. Not part of scripts/test.sh (about
# 25 minutes on 2 cores); the README's "Test strength" table is its output. Exits non-zero
# when a mutant survives that the README does not list as equivalent.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo mutants --version >/dev/null 2>&1; then
  cargo install --locked cargo-mutants
fi
out="${MUTANTS_OUT:-target/mutants}"
mkdir -p "$out"
status=0
# The modules whose decisions are pure: placement and diff, the destination parser, the
# codec table, the frame parser and the rebaser, the track rules, the retry policy, the
# hub queue.
cargo mutants --workspace --no-shuffle -o "$out/pure" \
  -f controller/src/scheduler/placement.rs -f controller/src/scheduler/diff.rs \
  -f proto/src/destination.rs -f media/src/codec.rs -f media/src/frame.rs \
  -f media/src/timeline.rs -f worker/src/tracks.rs -f retry/src/lib.rs \
  -f worker/src/hub/queue.rs -- --lib || status=$?
# The API's validation of startPush and updatePush.
cargo mutants --workspace --no-shuffle -o "$out/pushes" -f controller/src/pushes.rs \
  -F 'validate|present|check_|normalize_url|apply_update' -- --lib || status=$?
# Survivors that are equivalent to the code (README, "Test strength"): anything else fails.
equivalent='queue.rs:172:24: replace match guard|queue.rs:182:59: replace > with >='
survivors=$(cat "$out"/*/mutants.out/missed.txt 2>/dev/null | grep -Ev "$equivalent" || true)
if [ -n "$survivors" ]; then
  echo "mutants no test noticed:"
  echo "$survivors"
  exit 1
fi
# cargo-mutants exits 2 when mutants were missed, 3 on timeouts (a hang is noticed too).
case "$status" in 0 | 2 | 3) exit 0 ;; *) exit "$status" ;; esac
