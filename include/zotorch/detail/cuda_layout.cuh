// The CUDA backend's view of a ParamTable: one flat array of {data, numel, tensor_id, slot,
// first_tile} grouped by storage type, which the kernels walk by warp-sized tiles.
// Host-compilable on purpose: tests/cuda/cuda_emulation.h runs the kernel body on the CPU with it.
#pragma once

#include <zotorch/detail/sweep.h>

#include <cstdint>
#include <vector>

namespace zotorch {
namespace detail {

/// Elements one warp updates per tile: 4 Rademacher blocks, so one Philox call per block and term
/// is shared by the whole warp, and 16 elements per lane (4 whole Gaussian / rounding blocks).
constexpr int64_t kTileElements = 512;
constexpr int kWarpLanes = 32;
constexpr int kLaneElements = static_cast<int>(kTileElements / kWarpLanes);
static_assert(kLaneElements % kGaussianBlock == 0 && kLaneElements % kRoundingBlock == 0,
              "a lane must own whole Gaussian and rounding blocks, or two lanes would draw the same Philox block");

/// The four storage types; one kernel launch per type present in the table.
enum class CudaStorageKind : int32_t { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };
constexpr int kCudaStorageKinds = 4;

inline int cuda_storage_kind(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return static_cast<int>(CudaStorageKind::Float32);
    case at::kDouble: return static_cast<int>(CudaStorageKind::Float64);
    case at::kHalf: return static_cast<int>(CudaStorageKind::Float16);
    case at::kBFloat16: return static_cast<int>(CudaStorageKind::BFloat16);
    default: return -1;
  }
}

/// One non-empty tensor as the kernels see it (device-resident, read by every warp).
struct CudaTableEntry {
  void* data = nullptr;
  int64_t numel = 0;
  int64_t first_tile = 0;  ///< prefix sum of tiles within its storage kind
  uint32_t tensor_id = 0;
  int32_t slot = 0;       ///< index of its group among the groups this kind's launch resolves
  int32_t vector_ok = 0;  ///< data is 16-byte aligned, so 128-bit loads and stores are legal
  int32_t group = 0;
};

/// The part of the table one launch covers: the entries of one storage kind.
struct CudaKindRange {
  int32_t first_entry = 0;
  int32_t num_entries = 0;
  int64_t total_tiles = 0;
  int32_t num_slots = 0;
  uint8_t slot_group[kMaxGroups] = {};  ///< param group of each slot
};

/// Host copy of the device table, entries grouped by kind in list order.
struct CudaLayout {
  std::vector<CudaTableEntry> entries;
  CudaKindRange kinds[kCudaStorageKinds];
  int32_t max_group = -1;
};

ZOTORCH_HD int64_t tiles_of(int64_t numel) { return (numel + kTileElements - 1) / kTileElements; }

/// Index of the entry holding `tile`: the last one whose first tile is ≤ tile (entries are non-empty).
ZOTORCH_HD int32_t find_tile_entry(const CudaTableEntry* entries, int32_t count, int64_t tile) {
  int32_t low = 0, high = count;
  while (high - low > 1) {
    const int32_t middle = low + (high - low) / 2;
    if (entries[middle].first_tile <= tile) {
      low = middle;
    } else {
      high = middle;
    }
  }
  return low;
}

/// Builds the layout of a table whose tensors are all dense, contiguous and of a sweepable dtype
/// (check_sweepable); re-checks what a kernel would silently get wrong.
inline CudaLayout build_cuda_layout(const ParamTable& table) {
  CudaLayout layout;
  for (int kind = 0; kind < kCudaStorageKinds; ++kind) {
    CudaKindRange& range = layout.kinds[kind];
    range.first_entry = static_cast<int32_t>(layout.entries.size());
    int32_t slot_of_group[kMaxGroups];
    for (int32_t& slot : slot_of_group) slot = -1;
    for (const ParamEntry& entry : table.entries) {
      const at::Tensor& tensor = entry.tensor;
      const int entry_kind = cuda_storage_kind(tensor.scalar_type());
      TORCH_CHECK(entry_kind >= 0, "zotorch CUDA sweep: parameter ", entry.tensor_id, " has dtype ",
                  tensor.scalar_type(), "; only float32, float64, float16 and bfloat16 parameters can be trained");
      if (entry_kind != kind || tensor.numel() == 0) continue;
      TORCH_CHECK(tensor.is_contiguous(), "zotorch CUDA sweep: parameter ", entry.tensor_id, " of shape ",
                  tensor.sizes(), " is not contiguous; pass contiguous parameters");
      TORCH_CHECK(entry.group >= 0 && entry.group < kMaxGroups, "zotorch CUDA sweep: parameter ", entry.tensor_id,
                  " is in param group ", entry.group, "; at most ", kMaxGroups, " groups are supported");
      if (slot_of_group[entry.group] < 0) {
        slot_of_group[entry.group] = range.num_slots;
        range.slot_group[range.num_slots++] = static_cast<uint8_t>(entry.group);
      }
      CudaTableEntry out;
      out.data = tensor.data_ptr();
      out.numel = tensor.numel();
      out.first_tile = range.total_tiles;
      out.tensor_id = entry.tensor_id;
      out.slot = slot_of_group[entry.group];
      out.vector_ok = reinterpret_cast<uintptr_t>(out.data) % 16 == 0 ? 1 : 0;
      out.group = entry.group;
      range.total_tiles += tiles_of(out.numel);
      layout.max_group = entry.group > layout.max_group ? entry.group : layout.max_group;
      layout.entries.push_back(out);
    }
    range.num_entries = static_cast<int32_t>(layout.entries.size()) - range.first_entry;
  }
  return layout;
}

/// What one launch needs besides the plan; passed by value (kernel parameter space).
struct CudaLaunchArgs {
  const CudaTableEntry* entries = nullptr;  ///< this kind's first entry (device memory)
  int64_t total_tiles = 0;
  int32_t num_entries = 0;
  int32_t num_slots = 0;
  uint8_t slot_group[kMaxGroups] = {};
};

}  // namespace detail
}  // namespace zotorch
