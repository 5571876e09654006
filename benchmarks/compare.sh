#!/usr/bin/env bash
# zotorch against the reference-style Python steps (benchmarks/peers/), same model sizes, same
# weights, same batch, same machine, in one run: builds bench_step if needed, runs both sides per
# size, then prints the ratios table and plots overhead against model size (docs/performance.md).
# The peer side runs the tidied peers and, for MeZO and FZOO, the release-faithful ones
# (--peers tidied,release, the default); the table gives ours / each.
#
#   benchmarks/compare.sh [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--sizes tiny,small,medium]
#                         [--batch B] [--seq T] [--steps N] [--threads N] [--methods mezo,adamezo,fzoo,adam]
#                         [--peers tidied,release] [--out DIR] [--build DIR]
#
# Defaults: cpu: sizes tiny,small,medium at 2 x 64 tokens (about 10 minutes on 2 cores);
#           cuda: sizes tiny,small,medium,smollm2-135m at 16 x 128 tokens (the GPU target case).
# Environment: PYTHON (default .venv/bin/python, else python3), BUILD_JOBS (default 2).
# Output in --out (default out/compare-<device>): results.jsonl, table.md, overhead.png, run.txt.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
device=cpu dtype=float32 sizes="" batch="" seq="" steps=5 threads="" methods="mezo,adamezo,fzoo,adam" peers="tidied,release"
out="" build="$root/build"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --dtype) dtype="$2"; shift 2 ;;
    --sizes) sizes="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --seq) seq="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --methods) methods="$2"; shift 2 ;;
    --peers) peers="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --build) build="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [[ "$device" == cuda ]]; then
  sizes="${sizes:-tiny,small,medium,smollm2-135m}" batch="${batch:-16}" seq="${seq:-128}"
else
  sizes="${sizes:-tiny,small,medium}" batch="${batch:-2}" seq="${seq:-64}"
fi
out="${out:-$root/out/compare-$device}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
"$python" -c "import torch" 2>/dev/null || { echo "compare.sh: $python cannot import torch" >&2; exit 1; }
# matplotlib only draws the plot: install it once if a package index is reachable, else skip the plot.
have_plot=1
if ! "$python" -c "import matplotlib" 2>/dev/null; then
  echo "compare.sh: installing matplotlib into $("$python" -c 'import sys; print(sys.prefix)') for the plot" >&2
  "$python" -m pip install --quiet matplotlib >&2 || { echo "compare.sh: no matplotlib: no plot" >&2; have_plot=0; }
fi

bench="$build/benchmarks/bench_step"
# Always through the build tool: it rebuilds when any library header changed, not only bench_step.cpp,
# and does nothing when the program is up to date.
[[ -f "$build/CMakeCache.txt" ]] || cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >&2
cmake --build "$build" --target bench_step -j "${BUILD_JOBS:-2}" >&2

common=(--device "$device" --dtype "$dtype" --batch "$batch" --seq "$seq" --steps "$steps" --methods "$methods")
[[ -n "$threads" ]] && common+=(--threads "$threads")
results="$out/results.jsonl"
: >"$results"
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(uname -srm); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
  [[ "$device" == cuda ]] && echo "gpu: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
  echo "torch: $("$python" -c 'import torch; print(torch.__version__)')"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "command: benchmarks/compare.sh --device $device --dtype $dtype --sizes $sizes --batch $batch --seq $seq --steps $steps --methods $methods --peers $peers${threads:+ --threads $threads}"
} | tee "$out/run.txt" >&2

IFS=, read -r -a size_list <<<"$sizes"
for size in "${size_list[@]}"; do
  # The C++ side writes the seeded weights once; the peers load the same file.
  weights="$out/weights-$size.safetensors"
  rm -f "$weights"
  echo "== $size: zotorch" >&2
  "$bench" "${common[@]}" --size "$size" --weights "$weights" | tee -a "$results"
  echo "== $size: peer" >&2
  "$python" "$root/benchmarks/peers/bench_step.py" "${common[@]}" --peers "$peers" --size "$size" --weights "$weights" \
    | tee -a "$results"
  rm -f "$weights"
done

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/run.txt" >&2
plot_args=()
[[ $have_plot == 1 ]] && plot_args=(--plot "$out/overhead.png")
echo >&2
"$python" "$root/benchmarks/peers/compare.py" "$results" --markdown "$out/table.md" "${plot_args[@]}" \
  --title "$device $dtype, batch $batch x $seq tokens${threads:+, $threads thread(s)}, $(date -u +%Y-%m-%d)"
echo >&2
echo "compare.sh: wrote $results, $out/table.md${plot_args:+, $out/overhead.png}" >&2
