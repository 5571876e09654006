// The device-resident copy of a ParamTable (cuda_layout.cuh), kept in ParamTable::cuda_cache and
// rebuilt only when a data pointer, size, dtype, group or the list itself changes; every other
// sweep reuses it with no allocation, no copy and no host synchronisation. nvcc only.
#pragma once

#if !defined(__CUDACC__)
#error "zotorch/detail/cuda_table.cuh is compiled by nvcc only (share/zotorch/cuda_kernels.cu)"
#endif

#include <zotorch/detail/cuda_layout.cuh>

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

namespace zotorch {
namespace detail {

/// What the cache compares on every sweep to decide whether the device table is still valid.
struct CudaTableKey {
  const void* data = nullptr;
  int64_t numel = 0;
  uint32_t tensor_id = 0;
  int32_t group = 0;
  int32_t dtype = 0;
  int32_t device = 0;
  bool contiguous = false;

  static CudaTableKey of(const ParamEntry& entry) {
    const at::Tensor& t = entry.tensor;
    CudaTableKey key;
    key.data = t.numel() > 0 ? t.data_ptr() : nullptr;
    key.numel = t.numel();
    key.tensor_id = entry.tensor_id;
    key.group = entry.group;
    key.dtype = static_cast<int32_t>(t.scalar_type());
    key.device = t.device().is_cuda() ? t.device().index() : -1;
    key.contiguous = t.is_contiguous();
    return key;
  }
  bool operator==(const CudaTableKey& o) const {
    return data == o.data && numel == o.numel && tensor_id == o.tensor_id && group == o.group && dtype == o.dtype &&
           device == o.device && contiguous == o.contiguous;
  }
};

/// The CUDA backend's state for one ParamTable (stored type-erased in ParamTable::cuda_cache).
struct CudaTableCache {
  static constexpr uint64_t kMagic = 0x7a6f746f72636875ull;  // guards the static_pointer_cast from void
  uint64_t magic = kMagic;
  std::vector<CudaTableKey> key;
  CudaLayout layout;
  at::Tensor device_entries;  ///< layout.entries in device memory (caching allocator)
  c10::DeviceIndex device = -1;
  int sm_count = 0;
  cudaEvent_t ready = nullptr;        ///< recorded on the building stream after the upload
  std::vector<cudaStream_t> streams;  ///< streams ordered after `ready` and recorded on device_entries
  uint64_t builds = 0;                ///< number of uploads so far (tests check reuse with it)

  struct Occupancy {
    const void* kernel;
    size_t shared_bytes;
    int blocks_per_sm;
  };
  std::vector<Occupancy> occupancy;

  CudaTableCache() = default;
  CudaTableCache(const CudaTableCache&) = delete;
  CudaTableCache& operator=(const CudaTableCache&) = delete;
  ~CudaTableCache() {
    if (ready != nullptr) {
      // No throw from a destructor; at exit the runtime may already be gone and that is fine.
      int previous = 0;
      if (cudaGetDevice(&previous) == cudaSuccess && cudaSetDevice(device) == cudaSuccess) {
        (void)cudaEventDestroy(ready);
        (void)cudaSetDevice(previous);
      }
      (void)cudaGetLastError();
    }
  }

  bool matches(const ParamTable& table) const {
    if (key.size() != table.entries.size()) return false;
    for (size_t i = 0; i < key.size(); ++i) {
      if (!(key[i] == CudaTableKey::of(table.entries[i]))) return false;
    }
    return true;
  }

  /// Resident blocks per SM of `kernel` with `shared_bytes` of dynamic shared memory (asked once).
  int blocks_per_sm(const void* kernel, int threads, size_t shared_bytes) {
    for (const Occupancy& o : occupancy) {
      if (o.kernel == kernel && o.shared_bytes == shared_bytes) return o.blocks_per_sm;
    }
    int blocks = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, shared_bytes));
    TORCH_CHECK(blocks > 0, "zotorch CUDA sweep: the kernel cannot run with ", threads, " threads and ", shared_bytes,
                " bytes of shared memory on device ", static_cast<int>(device));
    occupancy.push_back({kernel, shared_bytes, blocks});
    return blocks;
  }
};

/// Uploads the layout of `table` on `stream` (pinned staging, so the host does not wait).
inline void rebuild_cuda_table(CudaTableCache& cache, const ParamTable& table, const c10::cuda::CUDAStream& stream) {
  const at::Device device = table.entries.front().tensor.device();
  for (size_t i = 0; i < table.entries.size(); ++i) {
    const at::Device other = table.entries[i].tensor.device();
    TORCH_CHECK(other == device, "zotorch CUDA sweep: parameter ", table.entries[i].tensor_id, " is on ", other,
                " but parameter ", table.entries.front().tensor_id, " is on ", device,
                "; move the model to one device (model->to(device))");
  }
  cache.layout = build_cuda_layout(table);
  cache.key.clear();
  for (const ParamEntry& entry : table.entries) cache.key.push_back(CudaTableKey::of(entry));
  if (cache.device != device.index()) {
    cache.device = device.index();
    cache.occupancy.clear();
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&cache.sm_count, cudaDevAttrMultiProcessorCount, cache.device));
    if (cache.ready != nullptr) {
      (void)cudaEventDestroy(cache.ready);
      cache.ready = nullptr;
    }
  }
  const size_t bytes = std::max<size_t>(1, cache.layout.entries.size()) * sizeof(CudaTableEntry);
  at::Tensor staging = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  if (!cache.layout.entries.empty()) std::memcpy(staging.data_ptr(), cache.layout.entries.data(), bytes);
  // The copy runs on the current stream of `device` (== stream); PyTorch keeps the pinned block
  // alive until it has completed. The old buffer goes back to the caching allocator, which waits
  // for every stream it was recorded on.
  cache.device_entries = staging.to(device, /*non_blocking=*/true);
  if (cache.ready == nullptr) C10_CUDA_CHECK(cudaEventCreateWithFlags(&cache.ready, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventRecord(cache.ready, stream.stream()));
  cache.streams.assign(1, stream.stream());
  ++cache.builds;
}

/// The cache of `table`, valid for a launch on `stream` (current stream of the table's device).
inline CudaTableCache& cuda_table(const ParamTable& table, const c10::cuda::CUDAStream& stream) {
  auto* cache = static_cast<CudaTableCache*>(table.cuda_cache.get());
  if (cache == nullptr || cache->magic != CudaTableCache::kMagic) {
    auto fresh = std::make_shared<CudaTableCache>();
    cache = fresh.get();
    table.cuda_cache = std::move(fresh);
  }
  // docs/cuda.md "CUDA graphs": a capture records launches, it does not run them, so neither an
  // upload nor a wait for an upload recorded outside the capture can happen inside one. Refuse both,
  // before any CUDA call that would invalidate the capture.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream.stream(), &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  if (!cache->matches(table)) {
    TORCH_CHECK(!capturing, "zotorch CUDA sweep: stream ", stream.id(), " is capturing a CUDA graph, but the "
                "parameters' device table must be built first (first sweep of this list, or a parameter's storage, "
                "size, dtype or group changed since the last one); run one sweep (an optimizer step) on this stream "
                "before beginning the capture, and change no parameter during it");
    rebuild_cuda_table(*cache, table, stream);
  } else if (std::find(cache->streams.begin(), cache->streams.end(), stream.stream()) == cache->streams.end()) {
    TORCH_CHECK(!capturing, "zotorch CUDA sweep: stream ", stream.id(), " is capturing a CUDA graph, but the "
                "parameters' device table was uploaded on another stream and a capture cannot wait for that; run one "
                "sweep (an optimizer step) on the capturing stream before beginning the capture");
    // First launch on another stream: order it after the upload and keep the buffer alive for it.
    C10_CUDA_CHECK(cudaStreamWaitEvent(stream.stream(), cache->ready, 0));
    c10::cuda::CUDACachingAllocator::recordStream(cache->device_entries.storage().data_ptr(), stream);
    cache->streams.push_back(stream.stream());
  }
  return *cache;
}

}  // namespace detail
}  // namespace zotorch
