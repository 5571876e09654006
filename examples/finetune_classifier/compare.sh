#!/usr/bin/env bash
# The fine-tuning comparison scripts/demo.sh runs: all-MiniLM-L6-v2 on real labelled text, trained
# by FZOO, MeZO, AdaMeZO (forward passes only) and Adam (backprop, 3 forward-pass equivalents per
# step), plus the majority-class and zero-shot baselines; prints a table and writes a PNG plot of
# dev accuracy against forward passes. Every run's metrics.csv and summary.json stay in --out.
#
# Usage: compare.sh [--program PATH] [--task polarity|wordnet] [--mode head|lora|full]
#                   [--budget N] [--train-layers K] [--batch N] [--seed N] [--device cpu|cuda]
#                   [--dtype float32|bfloat16] [--methods "fzoo mezo adamezo adam"] [--out DIR]
#                   [--lr-fzoo X --lr-mezo X --lr-adamezo X --lr-adam X] [--eps X]
#                   [--jobs N] [--threads N]
# Runs --jobs methods at a time (default 2) with --threads intra-op threads each (default 1): on a
# 2-core machine two single-threaded runs use both cores with no OpenMP barrier spinning.
# Frozen-layer caches go to $ZOTORCH_CACHE_DIR (default out/cache), shared by all runs.
# Defaults (sized for about 10 minutes on a 2-core CPU): --task polarity --mode lora
# --train-layers 1 --budget 1800, learning rates from `finetune_classifier --print-default-lr`
# (chosen on the dev set, docs/results.md). Each method leaves DIR/<method>/trained.safetensors.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
program="${ZOTORCH_BUILD_DIR:-$root/build}/examples/finetune_classifier/finetune_classifier"
task=polarity mode=lora budget=1800 train_layers=1 batch=16 seed=0 device=cpu dtype=float32
methods="fzoo mezo adamezo adam" out="$root/out/compare" eps="" threads=1 jobs=2
declare -A lr=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --program) program="$2"; shift 2 ;;
    --task) task="$2"; shift 2 ;;
    --mode) mode="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --train-layers) train_layers="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --dtype) dtype="$2"; shift 2 ;;
    --methods) methods="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --eps) eps="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --lr-fzoo|--lr-mezo|--lr-adamezo|--lr-adam) lr[${1#--lr-}]="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$program" ]] || { echo "compare.sh: $program is not built; run scripts/demo.sh or build the finetune_classifier target" >&2; exit 1; }

model="$("$root/scripts/fetch-model.sh" --quiet | tail -n1)"
"$root/scripts/fetch-data.sh" >/dev/null
data="$root/data/$task"
[[ -f "$data/train.tsv" ]] || { echo "compare.sh: no task '$task' under data/ (polarity or wordnet)" >&2; exit 2; }
case "$task" in
  # MeZO's SST-2 prompt: "<sentence> It was great/terrible." — here the label words initialise the head.
  polarity) prompt=(--label-template "It was {label}." --label-words "negative=terrible,positive=great") ;;
  *) prompt=(--label-template "{label}") ;;
esac
mkdir -p "$out"
common=(--model "$model" --train "$data/train.tsv" --dev "$data/dev.tsv" --test "$data/test.tsv"
        --mode "$mode" --train-layers "$train_layers" --batch "$batch" --seed "$seed" --device "$device"
        --dtype "$dtype" --cache-dir "${ZOTORCH_CACHE_DIR:-$root/out/cache}" "${prompt[@]}")
[[ -n "$threads" ]] && common+=(--threads "$threads")
eval_every=$(( budget / 12 > 0 ? budget / 12 : 1 ))

echo "== zero-shot baseline (the prompt-initialised head, no training)"
"$program" "${common[@]}" --optimizer fzoo --budget-forward-passes 0 --out "$out/zero-shot" --quiet

run_method() {
  local method="$1" rate args
  # The default comes from the program itself (examples/common/learning_rates.h): one table.
  rate="${lr[$method]:-$("$program" --print-default-lr --optimizer "$method" --mode "$mode")}"
  args=(--optimizer "$method" --budget-forward-passes "$budget" --eval-every "$eval_every" --out "$out/$method"
        --lr "$rate")
  [[ -n "$eps" && "$method" != adam ]] && args+=(--eps "$eps")
  echo "== $method ($mode, lr $rate, budget $budget forward passes) -> $out/$method/log.txt"
  rm -rf "$out/$method" && mkdir -p "$out/$method"  # a fresh run, not a resumed one
  if "$program" "${common[@]}" "${args[@]}" > "$out/$method/log.txt" 2>&1; then
    tail -n 2 "$out/$method/log.txt" | head -n 1
  else
    echo "compare.sh: $method failed:" >&2
    tail -n 5 "$out/$method/log.txt" >&2
    return 1
  fi
}
# The zero-shot run above built the frozen-layer cache, so parallel runs only read it.
source "$root/examples/common/compare_lib.sh"
compare_run_queue "$methods" "$jobs" "$out" run_method

# The table needs only Python's standard library; the plot uses Debian's python3-matplotlib
# (scripts/bootstrap.sh installs it), so nothing is installed at run time.
python=/usr/bin/python3
[[ -x "$python" ]] || python=python3
"$python" "$here/report.py" "$out" --methods $methods --title "all-MiniLM-L6-v2 on $task, mode $mode$([[ $mode == head ]] || echo " (top $train_layers layer(s))"), batch $batch"
