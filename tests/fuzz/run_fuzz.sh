#!/usr/bin/env bash
# ctest's fuzz_checkpoint (docs/reliability.md "Fuzzing"): writes the seed corpus (real checkpoints
# and trajectories of every optimizer), replays it and every saved finding once, fuzzes for SECONDS,
# and prints the executions, new inputs and findings. Fails on any crash, hang (> 10 s per input) or OOM.
#
#   run_fuzz.sh FUZZER WORKDIR SECONDS FINDINGS_DIR
set -euo pipefail
fuzzer="$1" work="$2" seconds="$3" findings="$4"
mkdir -p "$work/seeds" "$work/corpus"
rm -rf "$work/artifacts" && mkdir -p "$work/artifacts"

# LibTorch's unpickler allocates what a corrupted string length claims (tests/fuzz/findings/); a
# real process gets std::bad_alloc or the memory, so let allocations above 256 MiB fail the same
# way instead of ending the run. Leak checking stays off: LibTorch's own caches live until exit.
export ASAN_OPTIONS="detect_leaks=0:max_allocation_size_mb=256:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
# ASan warns once per refused allocation; the count goes in the summary, not the log's lines.
quiet() { grep -v "AddressSanitizer failed to allocate" || true; }

ZOTORCH_FUZZ_SEEDS="$work/seeds" "$fuzzer"
status=0
"$fuzzer" -runs=0 -timeout=10 -artifact_prefix="$work/artifacts/" "$work/seeds" "$findings" >"$work/replay.log" 2>&1 || status=$?
if [ "$status" -ne 0 ]; then
  quiet <"$work/replay.log" | tail -n 40
  echo "FAIL: replaying the seeds and $findings crashed (exit $status)"
  exit 1
fi
echo "replayed $(ls "$work/seeds" | wc -l) seeds and $(ls "$findings" | grep -vc '\.md$' || true) saved findings: no crash"

if [ "$seconds" -gt 0 ]; then
  "$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="$work/artifacts/" "$work/corpus" "$work/seeds" >"$work/fuzz.log" 2>&1 || status=$?
  stat() { grep -oE "^stat::$1: *[0-9]+" "$work/fuzz.log" | grep -oE '[0-9]+$' || echo "?"; }
  refused=$(grep -c "AddressSanitizer failed to allocate" "$work/fuzz.log" || true)
  echo "fuzzed ${seconds} s: $(stat number_of_executed_units) executions ($(stat average_exec_per_sec)/s)," \
       "$(stat new_units_added) new inputs, corpus $(ls "$work/corpus" | wc -l) files, peak RSS $(stat peak_rss_mb) MB," \
       "${refused} LibTorch allocations over 256 MiB refused"
fi
artifacts=$(ls "$work/artifacts" | wc -l)
if [ "$status" -ne 0 ] || [ "$artifacts" -ne 0 ]; then
  quiet <"$work/fuzz.log" | tail -n 60
  echo "FAIL: exit $status, $artifacts crashing inputs in $work/artifacts (copy them to tests/fuzz/findings/)"
  exit 1
fi
echo "PASS: no crash, no hang, every refused load left the optimizers and the model unchanged, and every refused trajectory replay the parameters"
