#!/usr/bin/env bash
# Installs what is missing, builds, and runs zotorch's main example: build/examples/quickstart,
# a fine-tune with forward passes only. Idempotent; arguments are passed to the example.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"

total_start=$SECONDS
zotorch_bootstrap
demo="$ZOTORCH_BUILD_DIR/examples/quickstart"
if [ ! -x "$demo" ]; then
  if [ ! -f "$ZOTORCH_ROOT/examples/quickstart.cpp" ]; then
    zotorch_die "examples/quickstart.cpp does not exist yet, so there is no demo to run (the build succeeded)"
  fi
  zotorch_die "$demo was not built; see the build output above"
fi
zotorch_log "running $demo $*"
status=0
zotorch_timed "demo" "$demo" "$@" || status=$?
ZOTORCH_TIMINGS+=("$(printf '%-28s %5ds' "total" $((SECONDS - total_start)))")
zotorch_print_timings
exit "$status"
