#!/usr/bin/env bash
# Prepares .deps/ (gitignored) on a machine with network access, for scripts/gpu-check.sh on a GPU
# machine that has none: Catch2 v2 (Debian's catch2 package, headers and CMake files) and portable
# ninja and CMake wheels (PyPI, manylinux x86_64) in case that machine lacks them. Idempotent.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="${ZOTORCH_DEPS:-$root/.deps}"
mkdir -p "$deps/download" "$deps/wheels"

# Catch2 v2: the .deb unpacked as a prefix (usr/include/catch2, usr/lib/cmake/Catch2), whose CMake
# package locates itself relative to its own directory.
if [[ ! -f "$deps/catch2/usr/include/catch2/catch.hpp" ]]; then
  if ! ls "$deps"/download/catch2_*.deb >/dev/null 2>&1; then
    (cd "$deps/download" && apt-get download catch2) || {
      echo "fetch-gpu-deps: 'apt-get download catch2' failed; run 'apt-get update' once and retry" >&2
      exit 1
    }
  fi
  rm -rf "$deps/catch2"
  dpkg-deb -x "$(ls "$deps"/download/catch2_*.deb | head -n 1)" "$deps/catch2"
fi

# ninja and CMake as wheels: self-contained binaries that run on any manylinux2014 x86_64 system,
# unpacked on the GPU machine only when it has no usable ninja or cmake. CMake stays below 4, which
# refuses some older cmake_minimum_required() lines in third-party packages.
python=""
for candidate in "$root/.venv/bin/python" python3; do
  if "$candidate" -m pip --version >/dev/null 2>&1; then
    python="$candidate"
    break
  fi
done
if [[ -z "$python" ]]; then
  echo "fetch-gpu-deps: no python with pip found (tried .venv/bin/python, python3); run scripts/bootstrap.sh" >&2
  exit 1
fi
for spec in "ninja>=1.10" "cmake>=3.25,<4"; do
  name="${spec%%[<>=]*}"
  if ! ls "$deps/wheels/${name}"-*.whl >/dev/null 2>&1; then
    "$python" -m pip download --quiet --no-deps --only-binary=:all: \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$deps/wheels" "$spec"
  fi
done

echo "fetch-gpu-deps: ready in $deps ($(du -sh "$deps" | cut -f1)):"
ls "$deps/wheels"
echo "Carry it to the GPU machine (the run tool's carry: [\".deps\"]) and run scripts/gpu-check.sh there."
