#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers and state machines that face the network
# (cargo fuzz, libFuzzer, nightly). Not part of scripts/test.sh: the suite only replays
# the checked-in corpora on stable (`fuzz/tests/replay.rs`).
#
#   scripts/fuzz.sh                      # every target, FUZZ_RUNS executions each
#   FUZZ_TARGETS=amf0 FUZZ_SECONDS=60 scripts/fuzz.sh
#
# FUZZ_RUNS (default 10,000,000) or FUZZ_SECONDS (a time bound instead) per target.
# Inputs the fuzzer finds interesting go to a scratch corpus (target/fuzz-corpus/), the
# checked-in one (fuzz/corpus/) is read; a crash is written to fuzz/artifacts/<target>/
# and the run fails: copy it into fuzz/corpus/<target>/ so the replay test keeps it.
# Prints executions and crashes per target at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal

targets=${FUZZ_TARGETS:-"chunk_decoder amf0 server_session client_session ts_muxer rest_json media_tags ts_demuxer"}
if [[ -n "${FUZZ_SECONDS:-}" ]]; then
  bound=(-max_total_time="$FUZZ_SECONDS")
else
  bound=(-runs="${FUZZ_RUNS:-10000000}")
fi
# The session targets start after the handshake (see fuzz/src/lib.rs); 1 KiB of chunk
# stream is several commands and frames, and runs ten times as many inputs per second
# as 4 KiB fed byte by byte.
max_len() {
  case $1 in
    server_session | client_session) echo 1024 ;;
    *) echo 4096 ;;
  esac
}
summary=()
status=0
for t in $targets; do
  scratch="target/fuzz-corpus/$t"
  mkdir -p "$scratch" "fuzz/artifacts/$t"
  log="target/fuzz-$t.log"
  # No sanitizer: the crates under test forbid unsafe code; libFuzzer's coverage and
  # Rust's own checks (panics, overflow in debug assertions) are what can fail.
  if cargo +nightly fuzz run -s none --debug-assertions --features libfuzzer "$t" \
      "$scratch" "fuzz/corpus/$t" -- "${bound[@]}" -max_len="$(max_len "$t")" -print_final_stats=1 \
      > "$log" 2>&1; then
    crashes=0
  else
    crashes=1
    status=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' || echo "?")
  summary+=("$t: $runs executions in ${secs}s, $crashes crash(es) (log: $log)")
done
printf 'fuzz: %s\n' "${summary[@]}"
exit $status
