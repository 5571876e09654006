#!/usr/bin/env bash
# Installs what is missing, builds, and runs zotorch's main examples: build/examples/quickstart,
# a fine-tune with forward passes only; the fine-tuning comparison on a real encoder and real data
# (examples/finetune_classifier/compare.sh, about 3 minutes); then a short run of the job the
# library is for, a decoder LLM fine-tuned prompt-based (examples/finetune_lm/compare.sh on
# SmolLM2-135M, about 4 minutes). Idempotent; arguments go to the first comparison.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"

total_start=$SECONDS
# Only the two programs it runs: the test suite (sanitizer build, fuzzer, benchmarks) is test.sh's.
zotorch_bootstrap quickstart finetune_classifier finetune_lm
demo="$ZOTORCH_BUILD_DIR/examples/quickstart"
if [ ! -x "$demo" ]; then
  if [ ! -f "$ZOTORCH_ROOT/examples/quickstart.cpp" ]; then
    zotorch_die "examples/quickstart.cpp does not exist yet, so there is no demo to run (the build succeeded)"
  fi
  zotorch_die "$demo was not built; see the build output above"
fi
zotorch_log "running $demo"
status=0
zotorch_timed "demo" "$demo" || status=$?
# The fine-tuning comparison: all-MiniLM-L6-v2 on real labelled text, FZOO vs MeZO vs
# AdaMeZO vs Adam; arguments go to it (examples/finetune_classifier/compare.sh --help).
if [ "$status" -eq 0 ]; then
  zotorch_timed "finetune comparison" env ZOTORCH_BUILD_DIR="$ZOTORCH_BUILD_DIR" \
    "$ZOTORCH_ROOT/examples/finetune_classifier/compare.sh" "$@" || status=$?
fi
# SmolLM2-135M (scripts/fetch-llm.sh converts it once): zero-shot, then MeZO and FZOO side by side
# at the same small forward-pass budget on a dev/test subset, so that it fits a few minutes; the
# full-size comparison and its results are in docs/results.md.
if [ "$status" -eq 0 ]; then
  zotorch_timed "LLM fine-tune" env ZOTORCH_BUILD_DIR="$ZOTORCH_BUILD_DIR" \
    "$ZOTORCH_ROOT/examples/finetune_lm/compare.sh" --methods "mezo fzoo" --budget 96 --eval-every 48 \
    --out "$ZOTORCH_ROOT/out/compare-lm-demo" -- --max-dev-examples 96 --max-test-examples 200 || status=$?
fi
ZOTORCH_TIMINGS+=("$(printf '%-28s %5ds' "total" $((SECONDS - total_start)))")
zotorch_print_timings
exit "$status"
