#!/usr/bin/env bash
# Scaling benchmark of data-parallel fine-tuning (docs/performance.md "Distributed scaling"): the
# same global batch and steps with 1, 2 and 4 processes on this machine through launch.sh, printing
# one JSON line per run and a table: steps/s, speed-up, forward-pass and all-reduce time per step,
# the CPU time of all ranks per step (wall time on a shared machine also measures the neighbours),
# and the all-reduce's own latency (the step's loss payload, timed apart from compute).
#
# usage: scaling.sh PROGRAM MODEL_DIR TRAIN_TSV DEV_TSV [--procs "1 2 4"] [--steps N] [--batch N]
#                   [--cores N | --threads N] [--optimizer fzoo|mezo|adamezo] [--dev-examples N]
#                   [-- extra program options]
# Each rank gets max(1, cores / processes) intra-op threads (default cores: nproc), so every run
# uses the whole machine (with more processes than cores they share), or --threads each.
set -euo pipefail
[[ $# -ge 4 ]] || { sed -n '2,12p' "$0"; exit 2; }
program="$1"; model="$2"; train="$3"; dev="$4"; shift 4
procs="1 2 4"
steps=21
batch=32
cores="$(nproc)"
optimizer=fzoo
dev_examples=64
fixed_threads=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --procs) procs="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --cores) cores="$2"; shift 2 ;;
    --optimizer) optimizer="$2"; shift 2 ;;
    --dev-examples) dev_examples="$2"; shift 2 ;;
    --threads) fixed_threads="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "scaling.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# The dev set is only evaluated before and after the timed steps; a slice keeps that short.
head -n "$dev_examples" "$dev" > "$out/dev.tsv"
dev="$out/dev.tsv"

lines=()
for n in $procs; do
  threads=${fixed_threads:-$(( cores / n ))}
  (( threads >= 1 )) || threads=1
  "$here/launch.sh" --nproc-per-node "$n" --grace 30 -- "$program" --model "$model" --train "$train" --dev "$dev" \
    --optimizer "$optimizer" --steps "$steps" --batch "$batch" --threads "$threads" --eval-every 0 --checkpoint-every 0 \
    --check-every 0 --measure-latency 200 --json --quiet --out "$out/run$n" "$@" > "$out/log$n" 2>&1 ||
    { cat "$out/log$n" >&2; echo "scaling.sh: the run with $n processes failed" >&2; exit 1; }
  line="$(grep '^{"benchmark":"distributed_finetune"' "$out/log$n")"
  echo "$line"
  lines+=("$line")
done

field() { sed -E "s/.*\"$1\":([^,}]*).*/\1/" <<< "$2"; }
base=""
printf '\n%-9s %-13s %-9s %-9s %-17s %-19s %-15s %-17s %s\n' processes threads/rank steps/s speed-up "forward ms/step" \
  "all-reduce ms/step" "CPU ms/step" "all-reduce us" "bytes/step (gradients would be)"
for line in "${lines[@]}"; do
  rate="$(field steps_per_second "$line")"
  [[ -n "$base" ]] || base="$rate"
  printf '%-9s %-13s %-9.3f %-9.2f %-17.1f %-19.2f %-15.1f %-17s %s (%s)\n' "$(field world_size "$line")" \
    "$(field threads_per_rank "$line")" "$rate" "$(awk -v a="$rate" -v b="$base" 'BEGIN { print a / b }')" \
    "$(field closure_ms_per_step "$line")" "$(field allreduce_ms_per_step "$line")" \
    "$(awk -v s="$(field cpu_seconds_per_step_all_ranks "$line")" 'BEGIN { print 1000 * s }')" \
    "$(field allreduce_latency_us "$line")" "$(field loss_bytes_per_step "$line")" \
    "$(field gradient_allreduce_bytes_per_step "$line")"
done
