// The CPU sweep kernels compiled once (docs/design.md "Packaging"): a program whose translation
// units define ZOTORCH_COMPILED_CPU_KERNELS (the zotorch::cpu_kernels CMake target does) calls this
// definition instead of instantiating the kernels in each of them.
#ifndef ZOTORCH_COMPILED_CPU_KERNELS
#define ZOTORCH_COMPILED_CPU_KERNELS 1
#endif
#include <zotorch/detail/cpu_sweep.h>

namespace zotorch {
namespace detail {

void cpu_sweep_compiled(const ParamTable& table, const SweepPlan& plan) { cpu_sweep(table, plan); }

}  // namespace detail
}  // namespace zotorch
