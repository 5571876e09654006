// Runs the CUDA kernel body on the CPU: the layout of the device table (cuda_layout.cuh), the
// resolved scalars and each warp's tile loop (cuda_tile.cuh) with the 32 lanes of a warp executed
// one after another between barriers. Machines without a GPU check the kernel's indexing with it.
#pragma once

#include <zotorch/detail/cuda_tile.cuh>

#include <memory>
#include <vector>

namespace zotorch_test {

/// The warp as sweep_tile sees it in the emulation: all 32 lanes' registers, barriers are no-ops
/// because each phase runs to completion for every lane before the next starts.
template <class Lane>
struct EmulatedWarp {
  Lane state[zotorch::detail::kWarpLanes];
  template <class F>
  void for_each(F&& f) {
    for (int lane = 0; lane < zotorch::detail::kWarpLanes; ++lane) f(state[lane], lane);
  }
  void sync() {}
};

template <class Storage, zotorch::Distribution Dist, bool Adaptive>
void emulate_launch(const zotorch::detail::SweepPlan& plan, const zotorch::detail::CudaLayout& layout, int kind,
                    int64_t warps) {
  using namespace zotorch::detail;
  using A = typename Storage::acc;
  const CudaKindRange& range = layout.kinds[kind];
  CudaLaunchArgs args;
  args.entries = layout.entries.data() + range.first_entry;
  args.total_tiles = range.total_tiles;
  args.num_entries = range.num_entries;
  args.num_slots = range.num_slots;
  for (int s = 0; s < range.num_slots; ++s) args.slot_group[s] = range.slot_group[s];
  const ResolvedLayout resolved_layout{plan.num_terms, args.num_slots, Adaptive, staged_plan(plan)};
  std::vector<A> resolved(static_cast<size_t>(resolved_layout.size()) + 1);
  resolve_scalars<A>(plan, args, resolved_layout, resolved.data(), 0, 1);
  std::vector<Words4> staged(kWarpLanes);
  auto warp = std::make_unique<EmulatedWarp<TileLane<Storage, Dist, Adaptive>>>();
  for (int64_t w = 0; w < warps; ++w) {
    sweep_warp_tiles<Storage, Dist, Adaptive>(*warp, plan, args, resolved_layout, resolved.data(), staged.data(), w,
                                              warps);
  }
}

template <class Storage>
void emulate_kind(const zotorch::detail::SweepPlan& plan, const zotorch::detail::CudaLayout& layout, int kind,
                  int64_t warps) {
  using zotorch::Distribution;
  const bool rademacher = plan.distribution == Distribution::Rademacher;
  if (plan.adaptive) {
    rademacher ? emulate_launch<Storage, Distribution::Rademacher, true>(plan, layout, kind, warps)
               : emulate_launch<Storage, Distribution::Gaussian, true>(plan, layout, kind, warps);
  } else {
    rademacher ? emulate_launch<Storage, Distribution::Rademacher, false>(plan, layout, kind, warps)
               : emulate_launch<Storage, Distribution::Gaussian, false>(plan, layout, kind, warps);
  }
}

/// What cuda_sweep would do to the tensors of `table` (here CPU tensors), with a grid of `warps` warps.
inline void emulate_cuda_sweep(const zotorch::detail::ParamTable& table, const zotorch::detail::SweepPlan& plan,
                               int64_t warps) {
  using namespace zotorch::detail;
  const CudaLayout layout = build_cuda_layout(table);
  for (int kind = 0; kind < kCudaStorageKinds; ++kind) {
    if (layout.kinds[kind].total_tiles == 0) continue;
    switch (static_cast<CudaStorageKind>(kind)) {
      case CudaStorageKind::Float32: emulate_kind<Float32Storage>(plan, layout, kind, warps); break;
      case CudaStorageKind::Float64: emulate_kind<Float64Storage>(plan, layout, kind, warps); break;
      case CudaStorageKind::Float16: emulate_kind<Float16Storage>(plan, layout, kind, warps); break;
      case CudaStorageKind::BFloat16: emulate_kind<BFloat16Storage>(plan, layout, kind, warps); break;
    }
  }
}

}  // namespace zotorch_test
