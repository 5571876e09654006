// The multi-tensor launcher of the CUDA backend: one grid-stride launch per storage type present
// covers every tensor of the table (warp per 512-element tile, cuda_tile.cuh), on the current
// stream, without host synchronisation or allocation. share/zotorch/cuda_kernels.cu registers it.
#pragma once

#if !defined(__CUDACC__)
#error "zotorch/detail/cuda_sweep.cuh is compiled by nvcc only: compile share/zotorch/cuda_kernels.cu (CMake target zotorch::cuda)"
#endif

#include <zotorch/detail/cuda_table.cuh>
#include <zotorch/detail/cuda_tile.cuh>

#include <cuda_runtime.h>

#include <type_traits>

namespace zotorch {
namespace detail {

constexpr int kCudaThreads = 256;
constexpr int kCudaWarps = kCudaThreads / kWarpLanes;

// The plan travels by value. SweepPlan alone is just over the classic 4 KB parameter limit, so this
// relies on the 32 KB limit of CUDA 12.1+ (sm_70 and newer); __grid_constant__ lets the kernel read
// it in place instead of copying it to local memory.
static_assert(sizeof(SweepPlan) + sizeof(CudaLaunchArgs) <= 32764, "kernel parameters exceed 32764 bytes");
#if defined(CUDART_VERSION) && CUDART_VERSION < 12010
#error "zotorch CUDA kernels need CUDA 12.1 or newer (kernel parameters above 4 KB)"
#endif
// docs/cuda.md "Compiler requirements": fast math changes divisions, square roots and subnormals, so
// CUDA would no longer equal the CPU bit for bit. nvcc 13 defines no macro for --use_fast_math,
// -ftz, -prec-div or -prec-sqrt (the build forces the exact values instead, cmake/zotorchCuda.cmake);
// these are the macros that other compilers and nvcc versions do define.
#if defined(__USE_FAST_MATH__) || (defined(__CUDA_FTZ) && __CUDA_FTZ) || \
    (defined(__CUDA_PREC_DIV) && !__CUDA_PREC_DIV) || (defined(__CUDA_PREC_SQRT) && !__CUDA_PREC_SQRT) || \
    defined(__CLANG_CUDA_APPROX_TRANSCENDENTALS__) || (defined(__CUDA_ARCH__) && defined(__FAST_MATH__))
#error "zotorch CUDA kernels must be compiled without --use_fast_math, -ftz=true, -prec-div=false, -prec-sqrt=false or -ffast-math: they would no longer round like the CPU (docs/cuda.md)"
#endif

/// Shared memory of one block: the Rademacher staging area, then the resolved group scalars.
template <Distribution Dist>
constexpr size_t staging_bytes() {
  return Dist == Distribution::Rademacher ? size_t{kCudaWarps} * kWarpLanes * sizeof(Words4) : 0;
}
template <class A, Distribution Dist>
inline size_t shared_bytes(const ResolvedLayout& layout) {
  return staging_bytes<Dist>() + static_cast<size_t>(layout.size()) * sizeof(A);
}
// Worst case (64 groups, 64 terms, adaptive and staged fp64) stays under the 48 KB that needs no opt-in.
static_assert(staging_bytes<Distribution::Rademacher>() + (3 * kMaxTerms + kMaxGroups * (3 + kMaxTerms)) * sizeof(double) <=
                  48 * 1024,
              "shared memory of a sweep block exceeds 48 KB");

/// The warp as sweep_tile sees it on the device: this lane's registers and a warp barrier.
template <class Lane>
struct WarpLanes {
  Lane state;
  int lane;
  template <class F>
  __device__ __forceinline__ void for_each(F&& f) {
    f(state, lane);
  }
  __device__ __forceinline__ void sync() { __syncwarp(); }
};

/// Blocks per SM a kernel's registers must allow (__launch_bounds__), docs/cuda.md "Occupancy":
/// Rademacher linear kernels 4 (64 registers), the other 32- and 16-bit kernels 2 (128), fp64 1.
/// Every count is reached without a spill; ctest's cuda_kernels_resource_budget checks both.
template <class Storage, Distribution Dist, bool Adaptive>
constexpr int min_blocks_per_sm() {
  if (std::is_same<Storage, Float64Storage>::value) return 1;
  return Dist == Distribution::Rademacher && !Adaptive ? 4 : 2;
}

template <class Storage, Distribution Dist, bool Adaptive>
__global__ void __launch_bounds__(kCudaThreads, (min_blocks_per_sm<Storage, Dist, Adaptive>()))
    sweep_kernel(const __grid_constant__ SweepPlan plan, const __grid_constant__ CudaLaunchArgs args) {
  using A = typename Storage::acc;
  extern __shared__ __align__(16) unsigned char shared[];
  Words4* staged = reinterpret_cast<Words4*>(shared) + (threadIdx.x / kWarpLanes) * kWarpLanes;
  A* resolved = reinterpret_cast<A*>(shared + staging_bytes<Dist>());

  const ResolvedLayout layout{plan.num_terms, args.num_slots, Adaptive, staged_plan(plan)};
  resolve_scalars<A>(plan, args, layout, resolved, static_cast<int>(threadIdx.x), kCudaThreads);
  __syncthreads();

  WarpLanes<TileLane<Storage, Dist, Adaptive>> lanes;
  lanes.lane = static_cast<int>(threadIdx.x % kWarpLanes);
  sweep_warp_tiles<Storage, Dist, Adaptive>(lanes, plan, args, layout, resolved, staged,
                                            static_cast<int64_t>(blockIdx.x) * kCudaWarps + threadIdx.x / kWarpLanes,
                                            static_cast<int64_t>(gridDim.x) * kCudaWarps);
}

template <class Storage, Distribution Dist, bool Adaptive>
void launch_sweep(const SweepPlan& plan, const CudaLaunchArgs& args, CudaTableCache& cache, cudaStream_t stream) {
  using A = typename Storage::acc;
  const auto kernel = &sweep_kernel<Storage, Dist, Adaptive>;
  const ResolvedLayout layout{plan.num_terms, args.num_slots, Adaptive, staged_plan(plan)};
  const size_t shared = shared_bytes<A, Dist>(layout);
  const int per_sm = cache.blocks_per_sm(reinterpret_cast<const void*>(kernel), kCudaThreads, shared);
  // Every block strides over an equal share of tiles, so launch no more blocks than fit at once.
  const int64_t wanted = (args.total_tiles + kCudaWarps - 1) / kCudaWarps;
  const int64_t resident = static_cast<int64_t>(per_sm) * cache.sm_count;
  const unsigned int blocks = static_cast<unsigned int>(std::max<int64_t>(1, std::min(wanted, resident)));
  kernel<<<blocks, kCudaThreads, shared, stream>>>(plan, args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class Storage>
void launch_sweep_for(const SweepPlan& plan, const CudaLaunchArgs& args, CudaTableCache& cache, cudaStream_t stream) {
  const bool rademacher = plan.distribution == Distribution::Rademacher;
  if (plan.adaptive) {
    rademacher ? launch_sweep<Storage, Distribution::Rademacher, true>(plan, args, cache, stream)
               : launch_sweep<Storage, Distribution::Gaussian, true>(plan, args, cache, stream);
  } else {
    rademacher ? launch_sweep<Storage, Distribution::Rademacher, false>(plan, args, cache, stream)
               : launch_sweep<Storage, Distribution::Gaussian, false>(plan, args, cache, stream);
  }
}

/// CudaBackend::sweep: one sweep over every tensor of `table` (all on one CUDA device) on that
/// device's current stream. Asynchronous, like any CUDA op.
/// The plan is a kernel parameter of more than 4 KB, which drivers older than CUDA 12.1 (r530)
/// reject at launch with an error that does not say why; say it before the first launch.
inline void require_large_kernel_parameters() {
  static const int driver = [] {
    int version = 0;
    C10_CUDA_CHECK(cudaDriverGetVersion(&version));
    return version;
  }();
  TORCH_CHECK(driver >= 12010, "zotorch CUDA sweep: the NVIDIA driver supports CUDA ", driver / 1000, ".",
              (driver % 1000) / 10, " (cudaDriverGetVersion = ", driver, "), but the kernels pass their ",
              sizeof(SweepPlan), "-byte plan as a kernel parameter, above the 4 KB limit of drivers before CUDA 12.1; "
              "install an NVIDIA driver of release 530 or newer");
}

inline void cuda_sweep(const ParamTable& table, const SweepPlan& plan) {
  if (table.entries.empty()) return;
  TORCH_CHECK(plan.num_terms >= 0 && plan.num_terms <= kMaxTerms, "zotorch CUDA sweep: SweepPlan::num_terms is ",
              plan.num_terms, "; it must be in [0, ", kMaxTerms, "]");
  TORCH_CHECK(plan.num_groups >= 1 && plan.num_groups <= kMaxGroups, "zotorch CUDA sweep: SweepPlan::num_groups is ",
              plan.num_groups, "; it must be in [1, ", kMaxGroups, "]");
  TORCH_CHECK(plan.distribution == Distribution::Rademacher || plan.distribution == Distribution::Gaussian,
              "zotorch CUDA sweep: unknown distribution ", static_cast<int>(plan.distribution));
  const at::Device device = table.entries.front().tensor.device();
  TORCH_CHECK(device.is_cuda(), "zotorch CUDA sweep: parameter ", table.entries.front().tensor_id, " is on ", device,
              ", not on a CUDA device");
  const c10::cuda::CUDAGuard guard(device);
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream(device.index());
  CudaTableCache& cache = cuda_table(table, stream);
  TORCH_CHECK(cache.layout.max_group < plan.num_groups, "zotorch CUDA sweep: a parameter is in group ",
              cache.layout.max_group, " but the plan has ", plan.num_groups, " groups");
  require_large_kernel_parameters();
  const auto* device_entries = static_cast<const CudaTableEntry*>(cache.device_entries.data_ptr());
  for (int kind = 0; kind < kCudaStorageKinds; ++kind) {
    const CudaKindRange& range = cache.layout.kinds[kind];
    if (range.total_tiles == 0) continue;
    CudaLaunchArgs args;
    args.entries = device_entries + range.first_entry;
    args.total_tiles = range.total_tiles;
    args.num_entries = range.num_entries;
    args.num_slots = range.num_slots;
    for (int s = 0; s < range.num_slots; ++s) args.slot_group[s] = range.slot_group[s];
    switch (static_cast<CudaStorageKind>(kind)) {
      case CudaStorageKind::Float32: launch_sweep_for<Float32Storage>(plan, args, cache, stream.stream()); break;
      case CudaStorageKind::Float64: launch_sweep_for<Float64Storage>(plan, args, cache, stream.stream()); break;
      case CudaStorageKind::Float16: launch_sweep_for<Float16Storage>(plan, args, cache, stream.stream()); break;
      case CudaStorageKind::BFloat16: launch_sweep_for<BFloat16Storage>(plan, args, cache, stream.stream()); break;
    }
  }
}

}  // namespace detail
}  // namespace zotorch
