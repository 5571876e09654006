#!/usr/bin/env bash
# CTest examples.safetensors_python: our writer's file read by Python's `safetensors`, and a file
# written by `safetensors` read by ours. Exit 77 (skipped) when PYTHON cannot import safetensors.
# Usage: safetensors_python_test.sh ROUNDTRIP_PROGRAM PYTHON OUT_DIR
set -euo pipefail
program="$1" python="$2" out="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "$python" || ! -x "$python" ]]; then
  echo "SKIPPED: no Python interpreter (set ZOTORCH_EXAMPLES_PYTHON)"
  exit 77
fi
rm -rf "$out" && mkdir -p "$out"
"$program" write "$out/ours.safetensors"
status=0
"$python" "$here/safetensors_check.py" "$out/ours.safetensors" "$out/python.safetensors" || status=$?
(( status == 0 )) || exit "$status"   # 77: skipped, anything else: failed
if [[ -f "$out/python.safetensors" ]]; then
  "$program" check "$out/python.safetensors"
else
  echo "the reverse direction (a file written by Python read by ours) was not checked: see above"
fi
