// Perturbation directions as pure functions of (key, tensor_id, probe, element): how step keys are
// derived from the seed, and zotorch::noise(), which materialises a direction for tests and replay.
#pragma once

#include <zotorch/detail/dispatch.h>
#include <zotorch/distribution.h>

#include <ATen/ATen.h>

#include <cstdint>

namespace zotorch {

/// The key of draw `step` of the stream seeded with `seed` (docs/algorithms.md "Noise").
/// A pure function, so a resumed run regenerates the same directions.
inline uint64_t step_key(uint64_t seed, uint64_t step) {
  return detail::splitmix64(seed ^ detail::splitmix64(step ^ 0x5A0707C4D1ull));
}

/// Materialises direction `probe` of tensor `tensor_id` under `key` with the given sizes.
/// Element j equals what every sweep adds for that element; it does not depend on the device,
/// thread count or chunking, and on the dtype only through rounding. Defaults: float32 on CPU.
inline at::Tensor noise(uint64_t key, int64_t tensor_id, int64_t probe, at::IntArrayRef sizes, Distribution dist,
                        const at::TensorOptions& options = {}) {
  TORCH_CHECK(tensor_id >= 0 && tensor_id <= int64_t{0xFFFFFFFF}, "zotorch::noise: tensor_id must be in [0, 2^32), got ",
              tensor_id);
  TORCH_CHECK(probe >= 0 && probe < int64_t{detail::kRoundingProbe}, "zotorch::noise: probe must be in [0, 2^32 - 1), got ",
              probe, " (2^32 - 1 is reserved for stochastic rounding)");
  const at::TensorOptions resolved = options.dtype(options.has_dtype() ? options.dtype() : caffe2::TypeMeta::Make<float>());
  detail::ParamTable table;
  table.entries.push_back({at::zeros(sizes, resolved), static_cast<uint32_t>(tensor_id), 0});
  detail::check_sweepable(table.entries.front().tensor, "zotorch::noise", 0);
  detail::SweepPlan plan;
  plan.distribution = dist;
  plan.add_term({key, static_cast<uint32_t>(probe), /*alpha=*/1.0, 0, 0, 0});
  detail::apply_sweep(table, plan);
  return table.entries.front().tensor;
}

}  // namespace zotorch
