// The bridge between host code compiled by any C++ compiler and the CUDA kernels, which only
// nvcc can compile: share/zotorch/cuda_kernels.cu fills this table once per program.
#pragma once

#include <zotorch/detail/sweep.h>

// The registry and the registration function keep default visibility even in code built with
// -fvisibility=hidden: a shared library that compiles the kernels registers them from inside
// itself, and the program must see the same registry (tests/visibility, docs/cuda.md).
#if defined(__GNUC__) || defined(__clang__)
#define ZOTORCH_REGISTRY_VISIBLE __attribute__((visibility("default")))
#else
#define ZOTORCH_REGISTRY_VISIBLE
#endif

namespace zotorch {
namespace detail {

/// Entry points of the CUDA backend; null until a program links the kernels.
struct CudaBackend {
  /// Runs one sweep over every tensor of the table (all on the current CUDA device) on the
  /// current stream, without host synchronisation.
  void (*sweep)(const ParamTable& table, const SweepPlan& plan) = nullptr;
};

/// The one registry of the program (an inline function's static is shared by all translation units).
ZOTORCH_REGISTRY_VISIBLE inline CudaBackend& cuda_backend() {
  static CudaBackend backend;
  return backend;
}

inline bool cuda_kernels_available() { return cuda_backend().sweep != nullptr; }

}  // namespace detail
}  // namespace zotorch

/// Defined (weak, C linkage so link lines can name it: -u zotorch_register_cuda_kernels) in
/// share/zotorch/cuda_kernels.cu.
extern "C" ZOTORCH_REGISTRY_VISIBLE void zotorch_register_cuda_kernels();

namespace zotorch {

/// Registers the CUDA kernels of share/zotorch/cuda_kernels.cu. That file does so by itself when the
/// program loads; call this (e.g. first in main) when it is compiled into a static library, so that
/// the linker keeps it: a program without the kernels then fails to link instead of failing at the
/// first CUDA sweep.
inline void register_cuda_kernels() { zotorch_register_cuda_kernels(); }

}  // namespace zotorch
