#!/usr/bin/env bash
# The chaos soak (tests/e2e/chaos.rs) for longer than the 2 minutes scripts/test.sh gives
# it: a cluster of three etcd members, two controllers and three workers, ten encoders,
# fifty tasks and a webhook receiver, put through random faults; prints a report and
# fails on any violation.
#
#   scripts/chaos.sh --minutes 30 [--seed N]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=2
seed=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --minutes) minutes=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "usage: $0 [--minutes N] [--seed N]" >&2; exit 2 ;;
  esac
done
scripts/deps.sh test > /dev/null
export CHAOS_SECONDS=$((minutes * 60))
[[ -n "$seed" ]] && export CHAOS_SEED=$seed
exec cargo test --test e2e chaos_soak -- --nocapture
