// The C++ benchmarks' CPU byte counter (../counting_allocator.h) as a C ABI for the Python peers, so
// both sides of docs/performance.md measure CPU peak memory with the same code. Built on first use
// by peers/memory.py with g++ against the LibTorch of the running Python (c10 headers only).
#include "../counting_allocator.h"

extern "C" {
void zotorch_counting_install() { zotorch::bench::CountingAllocator::install(); }
int64_t zotorch_counting_current() { return zotorch::bench::CountingAllocator::install().current(); }
int64_t zotorch_counting_peak() { return zotorch::bench::CountingAllocator::install().peak(); }
void zotorch_counting_reset_peak() { zotorch::bench::CountingAllocator::install().reset_peak(); }
}
