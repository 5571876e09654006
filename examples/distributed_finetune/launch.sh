#!/usr/bin/env bash
# Starts the ranks of one node for a c10d program (distributed_finetune) with torchrun's variables:
# RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT. Run it once per node.
# When a rank fails, the others get --grace seconds to fail on their own (the group's timeout) and
# are then stopped; the exit status is the first failing rank's.
#
# usage: launch.sh [--nproc-per-node N] [--nnodes M --node-rank K --master-addr HOST --master-port PORT]
#                  [--grace SECONDS] [--] PROGRAM [ARGS...]
#   one node, 4 ranks:   launch.sh --nproc-per-node 4 build/examples/distributed_finetune/distributed_finetune ...
#   node k of 2:         launch.sh --nproc-per-node 8 --nnodes 2 --node-rank k --master-addr node0 --master-port 29500 ...
set -euo pipefail

nproc=1
nnodes=1
node_rank=0
master_addr=127.0.0.1
master_port=""
grace=60
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nproc-per-node|-n) nproc="$2"; shift 2 ;;
    --nnodes) nnodes="$2"; shift 2 ;;
    --node-rank) node_rank="$2"; shift 2 ;;
    --master-addr) master_addr="$2"; shift 2 ;;
    --master-port) master_port="$2"; shift 2 ;;
    --grace) grace="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    --) shift; break ;;
    -*) echo "launch.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || { echo "launch.sh: no program given (try --help)" >&2; exit 2; }
for v in "$nproc" "$nnodes" "$node_rank" "$grace"; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "launch.sh: '$v' is not a number" >&2; exit 2; }
done
(( nproc >= 1 && nnodes >= 1 && node_rank < nnodes )) || { echo "launch.sh: need nproc >= 1, nnodes >= 1, node-rank < nnodes" >&2; exit 2; }

if [[ -z "$master_port" ]]; then
  (( nnodes == 1 )) || { echo "launch.sh: with --nnodes > 1 every node needs the same --master-port" >&2; exit 2; }
  # A port the kernel reports free right now (rank 0 binds it a moment later, as torchrun --standalone does).
  master_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
                 echo $(( 29500 + RANDOM % 10000 )))"
fi

pids=()
for (( local_rank = 0; local_rank < nproc; local_rank++ )); do
  RANK=$(( node_rank * nproc + local_rank )) LOCAL_RANK=$local_rank WORLD_SIZE=$(( nnodes * nproc )) \
    LOCAL_WORLD_SIZE=$nproc MASTER_ADDR="$master_addr" MASTER_PORT="$master_port" "$@" &
  pids+=($!)
done

# Poll rather than `wait -n`, so that the grace period can end while every rank is still blocked.
status=0
running=${#pids[@]}
finished=()
deadline=""
while (( running > 0 )); do
  for i in "${!pids[@]}"; do
    [[ -z "${finished[$i]:-}" ]] || continue
    kill -0 "${pids[$i]}" 2>/dev/null && continue  # bash reaps its children as they end
    code=0
    wait "${pids[$i]}" || code=$?
    finished[$i]=$code
    running=$(( running - 1 ))
    if (( code != 0 && status == 0 )); then
      status=$code
      deadline=$(( SECONDS + grace ))
      echo "launch.sh: local rank $i (pid ${pids[$i]}) exited with status $code" >&2
    fi
  done
  if [[ -n "$deadline" ]] && (( running > 0 && SECONDS >= deadline )); then
    echo "launch.sh: ranks still running ${grace}s after the first failure; stopping them" >&2
    for i in "${!pids[@]}"; do
      [[ -n "${finished[$i]:-}" ]] || kill -TERM "${pids[$i]}" 2>/dev/null || true
    done
    wait || true
    break
  fi
  (( running > 0 )) && sleep 0.2
done
exit "$status"
