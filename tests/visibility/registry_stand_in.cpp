// A shared library built with -fvisibility=hidden -fvisibility-inlines-hidden that registers a
// stand-in CUDA backend, as a library compiling share/zotorch/cuda_kernels.cu with those flags does.
#include <zotorch/detail/cuda_registry.h>

namespace {
void stand_in_sweep(const zotorch::detail::ParamTable&, const zotorch::detail::SweepPlan&) {}
}  // namespace

extern "C" __attribute__((visibility("default"))) void zotorch_test_register_stand_in() {
  zotorch::detail::cuda_backend().sweep = &stand_in_sweep;
}
