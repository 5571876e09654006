#!/usr/bin/env bash
# Installs what is missing, builds, and runs zotorch's main examples: build/examples/quickstart,
# a fine-tune with forward passes only, then the fine-tuning comparison on a real model and real
# data (examples/finetune_classifier/compare.sh). Idempotent; arguments go to the comparison.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"

total_start=$SECONDS
# Only the two programs it runs: the test suite (sanitizer build, fuzzer, benchmarks) is test.sh's.
zotorch_bootstrap quickstart finetune_classifier
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
ZOTORCH_TIMINGS+=("$(printf '%-28s %5ds' "total" $((SECONDS - total_start)))")
zotorch_print_timings
exit "$status"
