#!/usr/bin/env bash
# The one command for a lent GPU machine (torch in the system python, nvcc, no network): configure
# for sm_90 against that torch, build, run ctest with the CUDA tests, the CUDA benchmarks and
# compute-sanitizer, and write every log flat under $OUT (9 files at most). Needs .deps/ from
# scripts/fetch-gpu-deps.sh (Catch2, and ninja/cmake wheels in case the machine has none).
#
#   scripts/gpu-check.sh [all | build | test | bench | sanitize | lm]...     (default: all)
#
# Phases are separate so that each fits a 10-minute command: `build` first, then `test bench`, then
# `sanitize`, then `lm`; the build directory ($ZOTORCH_GPU_BUILD, default build-gpu/) is reused.
# `lm` fine-tunes SmolLM2-135M's shape with examples/finetune_lm in bfloat16 on the GPU for about
# LM_SECONDS (default 180) per method and records steps/s and peak memory. The machine cannot
# convert the model (no `gguf`, no registry), so when LM_MODEL (default models/smollm2-135m-instruct)
# holds only config.json and tokenizer.json (small enough to carry) the weights are random:
# speed and memory depend on the shape only, accuracy is then meaningless and not reported.
# Environment: OUT (log folder, default out/gpu-check), PYTHON (default python3), CUDA_ARCH
# (default 90), JOBS (default 16), ZOTORCH_DEPS (default .deps), TARGETS (build only these),
# SANITIZE_TOOLS (default "memcheck racecheck synccheck initcheck": split `sanitize` across commands).
# Exit status: 0 when every phase that ran passed, 1 otherwise; summary.txt says which failed.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${OUT:-$root/out/gpu-check}"
build="${ZOTORCH_GPU_BUILD:-$root/build-gpu}"
deps="${ZOTORCH_DEPS:-$root/.deps}"
python="${PYTHON:-python3}"
arch="${CUDA_ARCH:-90}"
jobs="${JOBS:-16}"
mkdir -p "$out" "$build"

# The 9 files under $OUT.
env_log="$out/env.txt"
build_log="$out/build.log"
ctest_log="$out/ctest.log"
cuda_log="$out/cuda_tests.log"
bench_sweep_log="$out/bench_sweep.log"
bench_other_log="$out/bench_other.log"
sanitizer_log="$out/sanitizer.log"
lm_log="$out/lm.log"
summary="$out/summary.txt"

failed=0
note() { echo "$*" | tee -a "$summary"; }
# phase NAME COMMAND...: runs a phase function, records its status and duration.
phase() {
  local name="$1"
  shift
  local start=$SECONDS
  if "$@"; then
    note "PASS  $name ($((SECONDS - start)) s)"
  else
    note "FAIL  $name ($((SECONDS - start)) s)"
    failed=1
  fi
}

# ---- tools: system ones first, .deps wheels otherwise ----------------------------------------------
unpack_wheel() {  # unpack_wheel NAME -> prints the unpacked folder, or nothing
  local wheel
  wheel="$(ls "$deps/wheels/$1"-*.whl 2>/dev/null | head -n 1)"
  [[ -n "$wheel" ]] || return 1
  local dir="$build/_tools/$1"
  if [[ ! -d "$dir" ]]; then
    mkdir -p "$dir" && "$python" -m zipfile -e "$wheel" "$dir" || return 1
    find "$dir" \( -path '*/data/bin/*' -o -path '*.data/scripts/*' \) -type f -exec chmod +x {} +
  fi
  echo "$dir"
}
wheel_tool() {  # wheel_tool NAME -> the executable NAME inside its unpacked wheel, or nothing
  local dir
  dir="$(unpack_wheel "$1")" || return 1
  find "$dir" \( -path "*/data/bin/$1" -o -path "*.data/scripts/$1" \) -type f | head -n 1
}

cmake_bin="$(command -v cmake || true)"
if [[ -n "$cmake_bin" ]]; then
  version="$("$cmake_bin" --version | head -n 1 | grep -oE '[0-9]+\.[0-9]+' | head -n 1)"
  if [[ "$(printf '%s\n3.22\n' "$version" | sort -V | head -n 1)" != "3.22" ]]; then cmake_bin=""; fi
fi
[[ -n "$cmake_bin" ]] || cmake_bin="$(wheel_tool cmake)"
ctest_bin="$(dirname "${cmake_bin:-/nonexistent}")/ctest"
[[ -x "$ctest_bin" ]] || ctest_bin="$(command -v ctest || true)"
ninja_bin="$(command -v ninja || true)"
[[ -n "$ninja_bin" ]] || ninja_bin="$(wheel_tool ninja)"
nvcc_bin="$(command -v nvcc || true)"
[[ -n "$nvcc_bin" ]] || nvcc_bin="$(ls /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc 2>/dev/null | sort -V | tail -n 1)"
sanitizer_bin="$(command -v compute-sanitizer || true)"
if [[ -z "$sanitizer_bin" && -n "$nvcc_bin" && -x "$(dirname "$nvcc_bin")/compute-sanitizer" ]]; then
  sanitizer_bin="$(dirname "$nvcc_bin")/compute-sanitizer"
fi

{
  echo "# gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) phases: ${*:-all}"
  echo "## host"; uname -a; nproc
  echo "## git"; git -C "$root" log -1 --format='%H %s' 2>&1; git -C "$root" status --short 2>&1 | head -n 40
  echo "## nvidia-smi"; nvidia-smi 2>&1
  nvidia-smi --query-gpu=name,compute_cap,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv 2>&1
  echo "## tools"
  echo "nvcc: ${nvcc_bin:-none}"; [[ -n "$nvcc_bin" ]] && "$nvcc_bin" --version 2>&1 | tail -n 2
  echo "cmake: ${cmake_bin:-none}"; [[ -n "$cmake_bin" ]] && "$cmake_bin" --version 2>&1 | head -n 1
  echo "ninja: ${ninja_bin:-none (make)}"; [[ -n "$ninja_bin" ]] && "$ninja_bin" --version 2>&1
  echo "compute-sanitizer: ${sanitizer_bin:-none}"
  echo "c++: $(c++ --version 2>&1 | head -n 1)"
  echo "## torch"
  "$python" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1
  echo "## .deps"; ls -R "$deps" 2>&1 | head -n 20
} >>"$env_log" 2>&1

# ---- phases -----------------------------------------------------------------------------------------
do_build() {
  [[ -n "$cmake_bin" ]] || { echo "no cmake >= 3.22 and no .deps/wheels/cmake-*.whl" >>"$build_log"; return 1; }
  [[ -n "$nvcc_bin" ]] || { echo "no nvcc on PATH or in /usr/local/cuda*/bin" >>"$build_log"; return 1; }
  local torch_prefix
  torch_prefix="$("$python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" || {
    echo "$python cannot import torch" >>"$build_log"
    return 1
  }
  local generator=(-G "Unix Makefiles")
  [[ -n "$ninja_bin" ]] && generator=(-G Ninja -DCMAKE_MAKE_PROGRAM="$ninja_bin")
  # -Xptxas=-v puts each kernel's registers and spills in the log: occupancy is what the sweep's
  # bandwidth depends on.
  "$cmake_bin" -S "$root" -B "$build" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DZOTORCH_CUDA=ON \
    -DCMAKE_CUDA_COMPILER="$nvcc_bin" \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" \
    -DTORCH_CUDA_ARCH_LIST="${arch:0:${#arch}-1}.${arch: -1}" \
    -DCMAKE_CUDA_FLAGS="-Xptxas=-v" \
    -DCMAKE_PREFIX_PATH="$torch_prefix;$deps/catch2/usr" \
    -DPython3_EXECUTABLE="$(command -v "$python")" >>"$build_log" 2>&1 || return 1
  local targets=()
  for target in ${TARGETS:-}; do targets+=(--target "$target"); done
  "$cmake_bin" --build "$build" -j "$jobs" "${targets[@]}" >>"$build_log" 2>&1
}

# The only skips a GPU machine may report (every other one fails the test phase, since ctest counts
# a skip as passed and a GPU machine that skips its CUDA tests has tested nothing):
#   - "SKIPPED: needs two CUDA devices", on a machine with fewer than two GPUs;
#   - "SKIPPED: no model", the tests of the real models' weights and tokenizers, which run on the
#     CPU and which a machine without network access cannot fetch (scripts/fetch-model.sh,
#     scripts/fetch-llm.sh);
#   - "SKIPPED: opt-in", a CPU test of extra local fixtures that runs only when asked to.
gpu_count="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
allowed_skip() {  # allowed_skip "SKIPPED: <reason>"
  case "$1" in
    "SKIPPED: needs two CUDA devices"*) [[ "${gpu_count:-0}" -lt 2 ]] ;;
    "SKIPPED: no model"* | "SKIPPED: opt-in"*) return 0 ;;
    *) return 1 ;;
  esac
}
check_skips() {  # check_skips LOG: every "SKIPPED: <reason>" line in LOG must be allowed
  local status=0 reason
  while IFS= read -r reason; do
    if allowed_skip "$reason"; then
      echo "allowed skip on this machine ($gpu_count GPU): $reason" >>"$1"
    else
      echo "ERROR: skipped on a GPU machine: $reason" | tee -a "$summary" >>"$1"
      status=1
    fi
  done < <(grep -oE "SKIPPED: .*" "$1" | sort -u)
  return $status
}

# LeakSanitizer on a GPU machine: the CUDA driver and runtime keep allocations until exit by design,
# and the sanitized tests (docs/reliability.md "Sanitizers") load them. Suppress leaks allocated
# inside those libraries only, for the test phase only; a leak in zotorch or LibTorch still fails.
lsan_suppressions="$build/lsan-gpu.supp"
gpu_lsan_options() {
  printf '%s\n' 'leak:libcuda.so' 'leak:libcudart.so' 'leak:libnvidia-' >"$lsan_suppressions"
  echo "suppressions=$lsan_suppressions${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
}

do_test() {
  [[ -n "$ctest_bin" && -d "$build" ]] || { echo "no ctest or no build; run the build phase first" >>"$ctest_log"; return 1; }
  local status=0
  local -x LSAN_OPTIONS="$(gpu_lsan_options)"  # expanded before `local` hides the caller's value
  echo "LSAN_OPTIONS=$LSAN_OPTIONS" >>"$ctest_log"
  (cd "$build" && "$ctest_bin" --output-on-failure -j 4 --timeout 900) >>"$ctest_log" 2>&1 || status=1
  # ctest does not print a skipped test's output: run each skipped entry again, verbosely, to get
  # its reason ("The following tests did not run:" lists them as "<number> - <name> (Skipped)").
  local skips="$build/ctest_skips.log" number
  : >"$skips"
  for number in $(sed -n '/The following tests did not run:/,/^$/p' "$ctest_log" |
                  grep -E '\(Skipped\)$' | grep -oE '^[[:space:]]*[0-9]+' | tr -d ' \t' | sort -un); do
    (cd "$build" && "$ctest_bin" -I "$number,$number" -V) >>"$skips" 2>&1
  done
  check_skips "$skips" || status=1
  cat "$skips" >>"$ctest_log" && rm -f "$skips"
  # The CUDA tests once more, alone, with their durations, and the g++-compiled tests on CUDA tensors
  # (every case tagged [cuda], tests/cuda/test_trajectory_cuda.cpp among them).
  local tests="$build/tests/zotorch_cuda_tests"
  if [[ -x "$tests" ]]; then
    "$tests" --durations yes --warn NoAssertions >>"$cuda_log" 2>&1 || status=1
    "$build/tests/zotorch_tests" "[cuda]" --durations yes --warn NoAssertions >>"$cuda_log" 2>&1 || status=1
    check_skips "$cuda_log" || status=1
  else
    echo "missing $tests" >>"$cuda_log"
    status=1
  fi
  grep -E "tests passed|tests failed|Total Test time" "$ctest_log" | tail -n 2 >>"$summary"
  return $status
}

do_bench() {
  local status=0
  local sweep="$build/benchmarks/bench_sweep"
  if [[ -x "$sweep" ]]; then
    "$sweep" --device cuda --case all --dtype all --dist all --terms all >>"$bench_sweep_log" 2>&1 || status=1
  else
    echo "missing $sweep" >>"$bench_sweep_log"
    status=1
  fi
  # Every other benchmark that takes --device.
  for bench in "$build"/benchmarks/bench_*; do
    [[ -x "$bench" && "$(basename "$bench")" != bench_sweep ]] || continue
    if "$bench" --help 2>&1 | grep -q -- "--device"; then
      echo "## $(basename "$bench") --device cuda" >>"$bench_other_log"
      timeout 600 "$bench" --device cuda >>"$bench_other_log" 2>&1 || status=1
    fi
  done
  return $status
}

do_sanitize() {
  [[ -n "$sanitizer_bin" ]] || { echo "no compute-sanitizer found" >>"$sanitizer_log"; return 1; }
  local tests="$build/tests/zotorch_cuda_tests"
  [[ -x "$tests" ]] || { echo "missing $tests; run the build phase first" >>"$sanitizer_log"; return 1; }
  local status=0
  # Every tool on every sweep test ("CUDA sweep*": single tensors with tails and misaligned views,
  # the 300-tensor list, table reuse, a side stream, graph capture) and on the noise test:
  # memcheck for out-of-bounds and misaligned accesses, racecheck and synccheck for the shared
  # staging of Rademacher words and the warp barriers around it, initcheck for reads of memory
  # nothing wrote. memcheck runs with PyTorch's caching allocator off, so that every tensor is its
  # own cudaMalloc and an access past a tensor's end is outside any allocation, not inside a
  # neighbour's cached block.
  local tool spec
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck synccheck initcheck}; do
    for spec in "CUDA sweep*" "zotorch::noise with CUDA options*"; do
      echo "## compute-sanitizer --tool $tool: $spec" >>"$sanitizer_log"
      if [[ $tool == memcheck ]]; then
        PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 900 "$sanitizer_bin" --tool "$tool" --error-exitcode 99 \
          "$tests" "$spec" >>"$sanitizer_log" 2>&1 || status=1
      else
        timeout 900 "$sanitizer_bin" --tool "$tool" --error-exitcode 99 "$tests" "$spec" >>"$sanitizer_log" 2>&1 ||
          status=1
      fi
    done
  done
  # The g++-compiled tests that step optimizers on CUDA tensors (docs/reliability.md): full steps,
  # steps aborted at every forward pass and restored, and a trajectory replayed on CUDA and the CPU
  # (tests/cuda/test_trajectory_cuda.cpp). All are tagged [cuda].
  for tool in memcheck racecheck; do
    echo "## compute-sanitizer --tool $tool: zotorch_tests [cuda]" >>"$sanitizer_log"
    if [[ $tool == memcheck ]]; then
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 900 "$sanitizer_bin" --tool "$tool" --error-exitcode 99 \
        "$build/tests/zotorch_tests" "[cuda]" >>"$sanitizer_log" 2>&1 || status=1
    else
      timeout 900 "$sanitizer_bin" --tool "$tool" --error-exitcode 99 "$build/tests/zotorch_tests" "[cuda]" \
        >>"$sanitizer_log" 2>&1 || status=1
    fi
  done
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$sanitizer_log" >>"$summary"
  return $status
}

do_lm() {
  local program="$build/examples/finetune_lm/finetune_lm"
  [[ -x "$program" ]] || { echo "missing $program; run the build phase first" >>"$lm_log"; return 1; }
  local model="${LM_MODEL:-$root/models/smollm2-135m-instruct}" seconds="${LM_SECONDS:-180}"
  [[ -f "$model/config.json" && -f "$model/tokenizer.json" ]] ||
    { echo "no config.json/tokenizer.json in $model (carry it: scripts/fetch-llm.sh --tokenizer-only)" >>"$lm_log"; return 1; }
  local data="$root/data/polarity"
  [[ -f "$data/train.tsv" ]] || { echo "no $data/train.tsv (carry data/polarity)" >>"$lm_log"; return 1; }
  if [[ ! -f "$model/model.safetensors" && ! -f "$model/model.bf16.safetensors" ]]; then
    echo "## random bfloat16 weights of the shape in $model/config.json (speed and memory only)" >>"$lm_log"
    "$python" - "$model" >>"$lm_log" 2>&1 <<'PY' || return 1
import json, sys, torch
from safetensors.torch import save_file
d = sys.argv[1]; c = json.load(open(d + "/config.json")); g = torch.Generator().manual_seed(0)
H, I, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
kv = H // c["num_attention_heads"] * c["num_key_value_heads"]
shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    shapes.update({p + "self_attn.q_proj.weight": (H, H), p + "self_attn.k_proj.weight": (kv, H),
                   p + "self_attn.v_proj.weight": (kv, H), p + "self_attn.o_proj.weight": (H, H),
                   p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                   p + "mlp.down_proj.weight": (H, I), p + "input_layernorm.weight": (H,),
                   p + "post_attention_layernorm.weight": (H,)})
w = {n: (torch.ones(s) if len(s) == 1 else torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for n, s in shapes.items()}
save_file(w, d + "/model.bf16.safetensors")
print(len(w), "tensors,", sum(t.numel() for t in w.values()), "parameters")
PY
  fi
  local status=0 method
  for method in fzoo mezo adamezo adam; do
    echo "## finetune_lm --device cuda --dtype bfloat16 --optimizer $method (about $seconds s)" >>"$lm_log"
    # A budget far beyond the time limit: the progress lines give steps/s; timeout ends the run.
    timeout "$seconds" "$program" --model "$model" --train "$data/train.tsv" --dev "$data/dev.tsv" \
      --test "$data/test.tsv" --device cuda --dtype bfloat16 --optimizer "$method" --mode full \
      --budget-forward-passes 1000000 --batch 16 --out "$out/lm-$method" >>"$lm_log" 2>&1
    local rc=$?
    [[ $rc == 0 || $rc == 124 ]] || status=1
    grep -E ' \| fp ' "$lm_log" | tail -n 1 >>"$summary"
  done
  # The same shape through the step benchmark: ZO step against an inference forward, and Adam.
  local bench="$build/benchmarks/bench_step"
  if [[ -x "$bench" ]]; then
    echo "## bench_step --device cuda --dtype bfloat16 --size smollm2-135m" >>"$lm_log"
    timeout 300 "$bench" --device cuda --dtype bfloat16 --size smollm2-135m >>"$lm_log" 2>&1 || status=1
  fi
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv >>"$lm_log" 2>&1
  return $status
}

phases=("$@")
[[ ${#phases[@]} -gt 0 ]] || phases=(all)
for p in "${phases[@]}"; do
  case "$p" in
    all) phase build do_build; phase test do_test; phase bench do_bench; phase sanitize do_sanitize; phase lm do_lm ;;
    build) phase build do_build ;;
    test) phase test do_test ;;
    bench) phase bench do_bench ;;
    sanitize) phase sanitize do_sanitize ;;
    lm) phase lm do_lm ;;
    *) echo "usage: scripts/gpu-check.sh [all|build|test|bench|sanitize|lm]..." >&2; exit 2 ;;
  esac
done
exit $failed
