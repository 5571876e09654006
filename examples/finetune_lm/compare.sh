#!/usr/bin/env bash
# The language-model comparison: SmolLM2-135M-Instruct (scripts/fetch-llm.sh) fine-tuned
# prompt-based on real labelled text by FZOO, MeZO, AdaMeZO (forward passes only) and Adam
# (backprop, 3 forward-pass equivalents per step) at the same forward-pass budget, plus the
# zero-shot prompt; prints a table and writes a PNG of dev accuracy against forward passes.
#
# Usage: compare.sh [--program PATH] [--task polarity|wordnet] [--mode full|lora|head-free]
#                   [--budget N] [--batch N] [--seed N] [--device cpu|cuda]
#                   [--dtype float32|bfloat16] [--methods "fzoo mezo adamezo adam"] [--out DIR]
#                   [--lr-fzoo X --lr-mezo X --lr-adamezo X --lr-adam X] [--jobs N] [--threads N]
#                   [--eval-every N]
#                   [-- extra finetune_lm options for every run]
# Defaults: --task polarity --mode full --budget 400 --dtype float32 --jobs 2 --threads 1 (two
# single-threaded runs use both cores of a 2-core machine; bfloat16 is not faster on such a CPU),
# --eval-every budget/8, learning rates from
# `finetune_lm --print-default-lr`. Prompts (docs/examples.md "finetune_lm"):
#   polarity  "{text} It was" + " great" / " terrible"   (the MeZO paper's SST-2 prompt)
#   wordnet   "{text} This is a kind of" + " action", " animal", " object", " body", " food",
#             " person", " plant", " substance"
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
program="${ZOTORCH_BUILD_DIR:-$root/build}/examples/finetune_lm/finetune_lm"
task=polarity mode=full budget=400 batch=16 seed=0 device=cpu dtype=float32 eval_every=
methods="fzoo mezo adamezo adam" out="$root/out/compare-lm" threads=1 jobs=2
declare -A lr=()
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --program) program="$2"; shift 2 ;;
    --task) task="$2"; shift 2 ;;
    --mode) mode="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --dtype) dtype="$2"; shift 2 ;;
    --methods) methods="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --eval-every) eval_every="$2"; shift 2 ;;
    --lr-fzoo|--lr-mezo|--lr-adamezo|--lr-adam) lr[${1#--lr-}]="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$program" ]] || { echo "compare.sh: $program is not built; run scripts/demo.sh or build the finetune_lm target" >&2; exit 1; }

model="$("$root/scripts/fetch-llm.sh" --quiet | tail -n1)"
"$root/scripts/fetch-data.sh" >/dev/null
data="$root/data/$task"
[[ -f "$data/train.tsv" ]] || { echo "compare.sh: no task '$task' under data/ (polarity or wordnet)" >&2; exit 2; }
case "$task" in
  polarity) prompt=(--template "{text} It was" --label-words "negative= terrible,positive= great") ;;
  wordnet) prompt=(--template "{text} This is a kind of"
                   --label-words "act= action,animal= animal,artifact= object,body= body,food= food,person= person,plant= plant,substance= substance") ;;
  *) echo "compare.sh: no prompt for task '$task' (polarity or wordnet)" >&2; exit 2 ;;
esac
mkdir -p "$out"
common=(--model "$model" --train "$data/train.tsv" --dev "$data/dev.tsv" --test "$data/test.tsv"
        --mode "$mode" --batch "$batch" --seed "$seed" --device "$device" --dtype "$dtype"
        --threads "$threads" "${prompt[@]}" "${extra[@]}")
[[ -n "$eval_every" ]] || eval_every=$(( budget / 8 > 0 ? budget / 8 : 1 ))

echo "== zero-shot: the pretrained model with the prompt, no training"
rm -rf "$out/zero-shot"
"$program" "${common[@]}" --optimizer mezo --budget-forward-passes 0 --out "$out/zero-shot" --quiet

run_method() {
  local method="$1" rate
  # The default comes from the program itself: one table of learning rates.
  rate="${lr[$method]:-$("$program" --print-default-lr --optimizer "$method" --mode "$mode")}"
  echo "== $method ($mode, lr $rate, budget $budget forward passes) -> $out/$method/log.txt"
  rm -rf "$out/$method" && mkdir -p "$out/$method"  # a fresh run, not a resumed one
  if "$program" "${common[@]}" --optimizer "$method" --lr "$rate" --budget-forward-passes "$budget" \
       --eval-every "$eval_every" --out "$out/$method" > "$out/$method/log.txt" 2>&1; then
    tail -n 2 "$out/$method/log.txt" | head -n 1
  else
    echo "compare.sh: $method failed:" >&2
    tail -n 5 "$out/$method/log.txt" >&2
    return 1
  fi
}
source "$root/examples/common/compare_lib.sh"
compare_run_queue "$methods" "$jobs" "$out" run_method

python=/usr/bin/python3
[[ -x "$python" ]] || python=python3
"$python" "$root/examples/finetune_classifier/report.py" "$out" --methods $methods \
  --title "SmolLM2-135M-Instruct (4-bit weights, dequantised) on $task, prompt-based, mode $mode, $dtype, batch $batch"
