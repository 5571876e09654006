// Installed-package consumer on CPU: the headers come from the install prefix, Torch from
// find_dependency, and FZOO steps (core.cpp) must run, move the parameters and count passes.
#include "core.h"

#include <zotorch/version.h>

#include <cstdio>
#include <cstring>

int main() {
  if (std::strcmp(ZOTORCH_VERSION_STRING, ZOTORCH_EXPECTED_VERSION) != 0) {
    std::fprintf(stderr, "version.h says %s, the CMake package says %s\n", ZOTORCH_VERSION_STRING,
                 ZOTORCH_EXPECTED_VERSION);
    return 1;
  }
  const int64_t passes = core_fzoo_steps(torch::Device(torch::kCPU), 5);
  std::printf("zotorch %s: 5 FZOO steps on CPU, %lld forward passes\n", ZOTORCH_VERSION_STRING,
              static_cast<long long>(passes));
  return passes == 5 * (4 + 1) ? 0 : 1;
}
