// The kernels must be registered in a program that links them by either CMake route, GPU or not;
// with a GPU, FZOO steps on CUDA parameters must then run through them.
#include "core.h"

#include <zotorch/detail/cuda_registry.h>

#include <torch/cuda.h>

#include <cstdio>
#include <filesystem>

#ifdef CONSUMER_OTHER_LIBRARY
bool other_sees_cuda_kernels();
#endif

int main() {
  if (!zotorch::detail::cuda_kernels_available()) {
    std::fprintf(stderr, "FAILED: zotorch's CUDA kernels are not registered in this program\n");
    return 1;
  }
#ifdef CONSUMER_OTHER_LIBRARY
  if (!other_sees_cuda_kernels()) {
    std::fprintf(stderr, "FAILED: the second library sees no registered kernels\n");
    return 1;
  }
#endif
  std::printf("zotorch CUDA kernels registered\n");
  if (!torch::cuda::is_available()) {
    // c10 reports no device both without a GPU and when CUDA fails to start; only the first may
    // pass (the project's tests/cuda_presence.h decides the same way).
    if (std::filesystem::exists("/dev/nvidiactl")) {
      std::fprintf(stderr, "FAILED: an NVIDIA driver is present (/dev/nvidiactl) but CUDA reports no usable device\n");
      return 1;
    }
    std::printf("no CUDA device: registration checked, the kernels were not run\n");
    return 0;
  }
  const int64_t passes = core_fzoo_steps(torch::Device(torch::kCUDA), 3);
  std::printf("3 FZOO steps on CUDA: %lld forward passes\n", static_cast<long long>(passes));
  return passes == 3 * (4 + 1) ? 0 : 1;
}
