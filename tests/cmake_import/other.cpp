// A second library of the same program that also asks for the CUDA kernels: the program must still
// link (one copy of the kernels' object file) and register them once.
#include <zotorch/detail/cuda_registry.h>

bool other_sees_cuda_kernels() { return zotorch::detail::cuda_kernels_available(); }
