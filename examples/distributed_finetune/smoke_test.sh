#!/usr/bin/env bash
# CTest smoke run of distributed_finetune: two ranks through launch.sh on the committed tiny BERT
# and sentences, 6 steps with a checkpoint at step 4, then a resumed continuation to step 10; rank 0
# leaves checkpoint.ckpt and trained.safetensors.
# usage: smoke_test.sh PROGRAM FIXTURES_DIR OUT_DIR
set -euo pipefail
program="$1"
fixtures="$2"
out="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rm -rf "$out"
mkdir -p "$out"
common=(--model "$fixtures/tiny-bert" --train "$fixtures/tiny_sentiment.tsv" --dev "$fixtures/tiny_sentiment.tsv"
        --batch 8 --lr 1e-2 --eps 1e-2 --threads 1 --checkpoint-every 4 --check-every 2 --eval-every 2
        --timeout 30 --out "$out" --measure-latency 5 --json)

"$here/launch.sh" --nproc-per-node 2 --grace 30 -- "$program" "${common[@]}" --steps 6 | tee "$out/first.log"
grep -q '"world_size":2' "$out/first.log"
test -f "$out/checkpoint.ckpt"
test -f "$out/trained.safetensors"

"$here/launch.sh" --nproc-per-node 2 --grace 30 -- "$program" "${common[@]}" --steps 10 --resume | tee "$out/resumed.log"
grep -q "resumed from .* at step 4" "$out/resumed.log"
grep -q 'step 10 | dev accuracy' "$out/resumed.log"
echo "distributed_finetune smoke test passed"
