// The one translation unit that compiles zotorch's CUDA kernels and registers them in
// zotorch::detail::cuda_backend(). Compile it once per program: CMake target zotorch::cuda adds it
// to your target, zotorch_add_cuda_kernels(<target>) to a target of your choice (docs/cuda.md).
#include <zotorch/detail/cuda_registry.h>
#include <zotorch/detail/cuda_sweep.cuh>

// Weak, so that a program that ends up compiling this file twice (two targets that both link
// zotorch::cuda) still links; both copies are identical.
extern "C" __attribute__((weak)) void zotorch_register_cuda_kernels() {
  zotorch::detail::cuda_backend().sweep = &zotorch::detail::cuda_sweep;
}

namespace {
// Registers at load time. A linker drops this object from a static library when nothing refers
// to it; calling zotorch::register_cuda_kernels() (or linking with -u zotorch_register_cuda_kernels)
// keeps it in.
const bool zotorch_cuda_kernels_registered = (zotorch_register_cuda_kernels(), true);
}  // namespace
