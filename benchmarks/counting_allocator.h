// Peak memory of CPU tensors for the step benchmarks (docs/performance.md "Optimizer step"): an
// allocator that wraps LibTorch's CPU allocator and counts live bytes. bench_step links it directly;
// the Python peers load the same code as a tiny shared library (peers/counting_allocator.cpp).
#pragma once

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <utility>

namespace zotorch::bench {

/// Counts the bytes of every CPU allocation made through c10's CPU allocator while it is alive, and
/// their peak. It allocates through the allocator that was installed before it (64 bytes more per
/// block, not counted), so tensors behave as without it. Seen: tensors and ATen kernels' scratch
/// buffers; not seen: oneDNN/MKL internal memory, Python objects, the libraries. Both sides of the
/// comparison use this same code.
class CountingAllocator final : public c10::Allocator {
 public:
  /// Installs the counter as LibTorch's CPU allocator (idempotent). Tensors allocated before keep
  /// their own deleter and are not counted: install before the model is built.
  static CountingAllocator& install() {
    static CountingAllocator* instance = [] {
      auto* counting = new CountingAllocator(c10::GetCPUAllocator());  // lives as long as tensors may
      c10::SetCPUAllocator(counting, /*priority=*/kPriority);
      return counting;
    }();
    return *instance;
  }

  int64_t current() const { return current_.load(std::memory_order_relaxed); }
  int64_t peak() const { return peak_.load(std::memory_order_relaxed); }
  /// Starts a new peak window at the bytes alive now.
  void reset_peak() { peak_.store(current(), std::memory_order_relaxed); }

  c10::DataPtr allocate(size_t nbytes) override {
    // A header in front of the block remembers its size, so that the pointer stays its own context:
    // ATen's raw_allocate (scratch space of CPU kernels) requires data == context.
    if (nbytes == 0) return {nullptr, nullptr, &release, c10::Device(c10::kCPU)};
    auto* block = static_cast<char*>(base_->raw_allocate(nbytes + kHeader));
    *reinterpret_cast<Header*>(block) = Header{nbytes, base_->raw_deleter()};
    add(static_cast<int64_t>(nbytes));
    void* data = block + kHeader;
    return {data, data, &release, c10::Device(c10::kCPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

 private:
  // Above what LibTorch itself installs (0), so that a later default registration cannot replace it.
  static constexpr uint8_t kPriority = 100;
  // One alignment unit of LibTorch's CPU allocator (64 bytes), so the data keeps its alignment.
  static constexpr size_t kHeader = 64;

  struct Header {
    size_t nbytes;
    c10::DeleterFnPtr free;  // the wrapped allocator's deleter
  };

  explicit CountingAllocator(c10::Allocator* base) : base_(base) {
    TORCH_CHECK(base->raw_deleter() != nullptr, "CountingAllocator: the CPU allocator in place has no raw deleter");
  }

  static void release(void* data) {
    if (data == nullptr) return;
    char* block = static_cast<char*>(data) - kHeader;
    const Header header = *reinterpret_cast<Header*>(block);
    install().add(-static_cast<int64_t>(header.nbytes));
    header.free(block);
  }

  void add(int64_t delta) {
    const int64_t now = current_.fetch_add(delta, std::memory_order_relaxed) + delta;
    int64_t seen = peak_.load(std::memory_order_relaxed);
    while (now > seen && !peak_.compare_exchange_weak(seen, now, std::memory_order_relaxed)) {
    }
  }

  c10::Allocator* base_;
  std::atomic<int64_t> current_{0};
  std::atomic<int64_t> peak_{0};
};

}  // namespace zotorch::bench
