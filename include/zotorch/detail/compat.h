// Differences between LibTorch releases that the optimizers must bridge (LibTorch 1.13 keyed
// optimizer state by a string, 2.x by the TensorImpl pointer).
#pragma once

#include <torch/version.h>

#include <ATen/ATen.h>

#include <string>

namespace zotorch {
namespace detail {

/// The key under which torch::optim::Optimizer::state() stores a parameter's state.
inline auto state_key(const at::Tensor& param) {
#if TORCH_VERSION_MAJOR >= 2
  return static_cast<void*>(param.unsafeGetTensorImpl());
#else
  return c10::guts::to_string(param.unsafeGetTensorImpl());
#endif
}

}  // namespace detail
}  // namespace zotorch
