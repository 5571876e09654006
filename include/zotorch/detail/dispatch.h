// Routes a sweep to the backend of the parameters' device after checking that every tensor is
// one the kernels can update in place.
#pragma once

#include <zotorch/detail/cpu_sweep.h>
#include <zotorch/detail/cuda_registry.h>

#include <string>

namespace zotorch {
namespace detail {

/// Throws a c10::Error naming `owner` and the parameter when a tensor cannot be swept in place.
inline void check_sweepable(const at::Tensor& tensor, const std::string& owner, size_t index) {
  TORCH_CHECK(tensor.defined(), owner, ": parameter ", index, " is an undefined tensor");
  TORCH_CHECK(tensor.layout() == at::kStrided, owner, ": parameter ", index, " has layout ", tensor.layout(),
              "; only dense (strided) tensors can be perturbed in place");
  const auto dtype = tensor.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, owner,
              ": parameter ", index, " has dtype ", dtype,
              "; only float32, float64, float16 and bfloat16 parameters can be trained");
  TORCH_CHECK(tensor.is_contiguous(), owner, ": parameter ", index, " of shape ", tensor.sizes(),
              " is not contiguous; pass a contiguous parameter (e.g. register p.contiguous() in the module)");
  TORCH_CHECK(tensor.device().is_cpu() || tensor.device().is_cuda(), owner, ": parameter ", index, " is on ",
              tensor.device(), "; zotorch runs on CPU and CUDA tensors");
  TORCH_CHECK(tensor.numel() < (int64_t{1} << 40), owner, ": parameter ", index, " has ", tensor.numel(),
              " elements; at most 2^40 are supported");
}

/// Applies one sweep to every tensor of the table. All tensors share one device. CPU sweeps go to
/// the kernels compiled once per program when ZOTORCH_COMPILED_CPU_KERNELS is defined (cpu_sweep.h).
inline void apply_sweep(const ParamTable& table, const SweepPlan& plan) {
  if (table.entries.empty()) return;
  const at::Device device = table.entries.front().tensor.device();
  if (device.is_cuda()) {
    TORCH_CHECK(cuda_kernels_available(),
                "zotorch: parameters are on CUDA but this program has no zotorch CUDA kernels; link the CMake "
                "target zotorch::cuda (or call zotorch_add_cuda_kernels(<target>)) into the program");
    cuda_backend().sweep(table, plan);
  } else {
#if defined(ZOTORCH_COMPILED_CPU_KERNELS)
    cpu_sweep_compiled(table, plan);
#else
    cpu_sweep(table, plan);
#endif
  }
}

}  // namespace detail
}  // namespace zotorch
