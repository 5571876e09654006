// ctest cuda_registry.hidden_visibility: the program must see a backend registered inside a shared
// library built with hidden visibility, i.e. cuda_backend() is one object across the process
// (docs/cuda.md "Getting the kernels into a program"). Fails (exit 1) when each module keeps its own copy of the registry.
#include <zotorch/detail/cuda_registry.h>

#include <cstdio>

extern "C" void zotorch_test_register_stand_in();

int main() {
  if (zotorch::detail::cuda_kernels_available()) {
    std::fprintf(stderr, "a CUDA backend is registered before the library registered its stand-in\n");
    return 1;
  }
  zotorch_test_register_stand_in();
  if (!zotorch::detail::cuda_kernels_available()) {
    std::fprintf(stderr,
                 "the shared library registered a backend the program cannot see: cuda_backend() has one copy "
                 "per module\n");
    return 1;
  }
  std::printf("the registry is shared across a hidden-visibility shared library\n");
  return 0;
}
