// Philox4x32-10 and the element transforms of detail/philox.h: published known-answer vectors,
// agreement with ATen's own Philox engine, the vectorised batch versions the CPU sweep uses, and
// the accuracy of the libm-free log and sincos that the Gaussian transform is built on.
#include <zotorch/detail/cpu_sweep.h>

#include <ATen/ATen.h>
#include <ATen/core/PhiloxRNGEngine.h>
#include <catch2/catch.hpp>

#include "skip.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

using namespace zotorch::detail;

namespace {

uint32_t float_bits(float f) { return bit_cast<uint32_t>(f); }

/// The four words ATen's engine yields for the block at `offset` of subsequence `subsequence`.
/// ATen's offset counts 128-bit blocks; subsequence fills counter words 2 and 3.
Words4 aten_block(uint64_t key, uint64_t subsequence, uint64_t offset) {
  at::Philox4_32 engine(key, subsequence, offset);
  Words4 out;
  for (int q = 0; q < 4; ++q) out.w[q] = engine();  // one call per statement: the order is defined
  return out;
}

}  // namespace

TEST_CASE("Philox4x32-10 reproduces the Random123 known-answer vectors", "[philox]") {
  const Words4 zeros = philox4x32_10(Words4{{0u, 0u, 0u, 0u}}, 0u, 0u);
  CHECK(zeros.w[0] == 0x6627e8d5u);
  CHECK(zeros.w[1] == 0xe169c58du);
  CHECK(zeros.w[2] == 0xbc57ac4cu);
  CHECK(zeros.w[3] == 0x9b00dbd8u);
  const Words4 ones = philox4x32_10(Words4{{~0u, ~0u, ~0u, ~0u}}, ~0u, ~0u);
  CHECK(ones.w[0] == 0x408f276du);
  CHECK(ones.w[1] == 0x41c83b0eu);
  CHECK(ones.w[2] == 0xa20bc7c6u);
  CHECK(ones.w[3] == 0x6d5451fdu);
  const Words4 pi = philox4x32_10(Words4{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u);
  CHECK(pi.w[0] == 0xd16cfe09u);
  CHECK(pi.w[1] == 0x94fdccebu);
  CHECK(pi.w[2] == 0x5001e420u);
  CHECK(pi.w[3] == 0x24126ea1u);
}

TEST_CASE("noise_block equals ATen's Philox4_32 at counter {block, tensor_id, probe}", "[philox]") {
  std::mt19937_64 rng(20260);
  int mismatches = 0;
  for (int trial = 0; trial < 4000; ++trial) {
    const uint64_t key = rng();
    const uint32_t tensor_id = static_cast<uint32_t>(rng());
    const uint32_t probe = static_cast<uint32_t>(rng());
    // Small blocks, blocks near the 2^32 carry, and anywhere in 64 bits.
    const uint64_t block = trial % 3 == 0 ? rng() % 4096 : trial % 3 == 1 ? 0xFFFFFFFFull - rng() % 8 : rng();
    const Words4 ours = noise_block(key, tensor_id, probe, block);
    const Words4 theirs = aten_block(key, (static_cast<uint64_t>(probe) << 32) | tensor_id, block);
    for (int q = 0; q < 4; ++q) mismatches += ours.w[q] != theirs.w[q];
  }
  CHECK(mismatches == 0);
}

TEST_CASE("Consecutive blocks are ATen's consecutive outputs of one subsequence", "[philox]") {
  const uint64_t key = 0x0123456789ABCDEFull;
  at::Philox4_32 engine(key, (uint64_t{3} << 32) | 11u, 0);
  for (uint64_t block = 0; block < 64; ++block) {
    const Words4 ours = noise_block(key, 11u, 3u, block);
    for (int q = 0; q < 4; ++q) REQUIRE(ours.w[q] == engine());
  }
}

TEST_CASE("The CPU's batched Philox equals noise_block lane by lane in every build", "[philox]") {
  std::mt19937_64 rng(7);
  const CpuKernels saved = cpu_kernels();
  for (CpuKernels kernels : {CpuKernels::Portable, CpuKernels::Avx2, CpuKernels::Avx512, CpuKernels::Best}) {
    cpu_kernels() = kernels;
    int mismatches = 0;
    for (int trial = 0; trial < 300; ++trial) {
      const uint64_t key = rng();
      const uint32_t tensor_id = static_cast<uint32_t>(rng()), probe = static_cast<uint32_t>(rng());
      // Batches that straddle the carry from counter word 0 into word 1.
      const uint64_t first = trial % 2 == 0 ? rng() >> 8 : 0xFFFFFFF0ull + rng() % 16;
      alignas(64) uint32_t w32[4][32];
      alignas(64) uint32_t w8[4][8];
      philox_lanes<32>(key, tensor_id, probe, first, w32);
      for (int i = 0; i < 32; ++i) {
        const Words4 ref = noise_block(key, tensor_id, probe, first + i);
        for (int q = 0; q < 4; ++q) mismatches += ref.w[q] != w32[q][i];
      }
#if defined(ZOTORCH_CPU_AVX2_DISPATCH)
      if (cpu_use_avx2()) {
        philox_batch<true, 32>(key, tensor_id, probe, first, w32);
        philox_batch<true, 8>(key, tensor_id, probe, first, w8);
        for (int i = 0; i < 32; ++i) {
          const Words4 ref = noise_block(key, tensor_id, probe, first + i);
          for (int q = 0; q < 4; ++q) mismatches += ref.w[q] != w32[q][i];
          if (i < 8) {
            for (int q = 0; q < 4; ++q) mismatches += ref.w[q] != w8[q][i];
          }
        }
      }
#endif
    }
    INFO("kernels " << static_cast<int>(kernels));
    CHECK(mismatches == 0);
  }
  cpu_kernels() = saved;
}

TEST_CASE("Rademacher sign masks take bit i of the block, +1 for 0", "[philox]") {
  const Words4 bits{{0x00000001u, 0x80000000u, 0xFFFFFFFFu, 0x0F0F0F0Fu}};
  CHECK(signed_coefficient(0.5f, rademacher_sign_mask(bits, 0)) == -0.5f);  // bit 0 of word 0 is set
  CHECK(signed_coefficient(0.5f, rademacher_sign_mask(bits, 1)) == 0.5f);
  CHECK(signed_coefficient(0.5f, rademacher_sign_mask(bits, 63)) == -0.5f);  // bit 31 of word 1
  for (int i = 0; i < 128; ++i) {
    const uint32_t bit = (bits.w[i / 32] >> (i % 32)) & 1u;
    const float z = signed_coefficient(1.0f, rademacher_sign_mask(bits, i));
    REQUIRE(z == (bit ? -1.0f : 1.0f));
    REQUIRE(rademacher_sign_mask(bits, i) == sign_mask_of_bit(bits.w[i / 32], i % 32));
    REQUIRE(signed_coefficient(0.25, rademacher_sign_mask(bits, i)) == (bit ? -0.25 : 0.25));
  }
}

TEST_CASE("Uniforms lie on their exact grid strictly inside (0, 1), and rounding draws are the words' 16-bit halves", "[philox]") {
  CHECK(open_uniform(0u) == std::ldexp(1.0f, -24));
  CHECK(open_uniform(~0u) == 1.0f - std::ldexp(1.0f, -24));
  std::mt19937 rng(3);
  int off_grid = 0;
  for (int i = 0; i < 100000; ++i) {
    const uint32_t word = rng();
    const float u = open_uniform(word);
    off_grid += !(u > 0.0f && u < 1.0f);
    off_grid += static_cast<double>(u) * 16777216.0 != static_cast<double>(((word >> 9) << 1) | 1u);
  }
  CHECK(off_grid == 0);
  // Element i of a rounding block: the low half of word i/2 for even i, the high half for odd i,
  // i.e. the block's words read as little-endian 16-bit values.
  const uint32_t words[4] = {0x11112222u, 0x33334444u, 0x55556666u, 0x77778888u};
  const uint32_t expected[8] = {0x2222u, 0x1111u, 0x4444u, 0x3333u, 0x6666u, 0x5555u, 0x8888u, 0x7777u};
  for (int i = 0; i < 8; ++i) CHECK(rounding_bits16(words, i) == expected[i]);
  uint16_t halves[8];
  std::memcpy(halves, words, sizeof(halves));
  for (int i = 0; i < 8; ++i) CHECK(rounding_bits16(words, i) == halves[i]);
}

TEST_CASE("log_unit is within 4 ulp of the exact log on every uniform the Gaussian can draw", "[philox]") {
  // All 2^23 values of open_uniform: the log's whole input domain.
  double worst_ulps = 0;
  for (uint32_t k = 0; k < (1u << 23); ++k) {
    const float u = open_uniform(k << 9);
    const double exact = std::log(static_cast<double>(u));
    const double ulp = std::ldexp(1.0, std::ilogb(static_cast<float>(exact)) - 23);
    worst_ulps = std::max(worst_ulps, std::abs(static_cast<double>(log_unit(u)) - exact) / ulp);
  }
  INFO("worst error " << worst_ulps << " ulp");
  CHECK(worst_ulps < 4.0);
}

TEST_CASE("sincos_turns is accurate to 2e-7 absolute on every angle the Gaussian can draw", "[philox]") {
  double worst = 0;
  int outside_unit = 0;
  for (uint32_t k = 0; k < (1u << 23); ++k) {
    const float t = open_uniform(k << 9);
    const SinCos sc = sincos_turns(t);
    const double angle = 2.0 * M_PI * static_cast<double>(t);
    worst = std::max(worst, std::abs(static_cast<double>(sc.cos) - std::cos(angle)));
    worst = std::max(worst, std::abs(static_cast<double>(sc.sin) - std::sin(angle)));
    outside_unit += std::abs(sc.cos) > 1.0f || std::abs(sc.sin) > 1.0f;
  }
  INFO("worst absolute error " << worst);
  CHECK(worst < 2e-7);
  CHECK(outside_unit == 0);
}

#if defined(ZOTORCH_CPU_AVX2_DISPATCH)
namespace {
/// Counts the uniforms k << 9 (k in [begin, begin + count), count a multiple of W) whose W-lane
/// uniform, log_unit or sincos_turns differs in any bit from the scalar function's. Inlined into
/// the ISA's own function below, as the sweeps inline it.
template <int W>
ZOTORCH_CPU_INLINE int lane_transform_mismatches(uint32_t begin, uint32_t count) {
  using G = GaussianLanes<W>;
  int mismatches = 0;
  for (uint32_t k = begin; k < begin + count; k += W) {
    typename G::U words;
    for (uint32_t i = 0; i < W; ++i) words[i] = (k + i) << 9;
    typename G::F u, log_u, cosine, sine;
    G::open_uniform(words, u);
    G::log_unit(u, log_u);
    G::sincos_turns(u, cosine, sine);
    for (int i = 0; i < W; ++i) {
      const float expected_u = open_uniform(words[i]);
      const SinCos sc = sincos_turns(expected_u);
      mismatches += float_bits(u[i]) != float_bits(expected_u);
      mismatches += float_bits(log_u[i]) != float_bits(log_unit(expected_u));
      mismatches += float_bits(cosine[i]) != float_bits(sc.cos);
      mismatches += float_bits(sine[i]) != float_bits(sc.sin);
    }
  }
  return mismatches;
}
__attribute__((target("avx2"))) ZOTORCH_CPU_NO_CONTRACT int avx2_transform_mismatches() {
  return lane_transform_mismatches<8>(0, 1u << 23);
}
#if defined(ZOTORCH_CPU_AVX512_SWEEP)
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) ZOTORCH_CPU_NO_CONTRACT int
avx512_transform_mismatches() {
  return lane_transform_mismatches<16>(0, 1u << 23);
}
#endif
}  // namespace

TEST_CASE("The AVX2 and AVX-512 uniform, log_unit and sincos_turns equal philox.h's on all 2^23 uniforms",
          "[philox]") {
  if (!__builtin_cpu_supports("avx2")) ZOTORCH_SKIP_TEST("this CPU has no AVX2");
  CHECK(avx2_transform_mismatches() == 0);
#if defined(ZOTORCH_CPU_AVX512_SWEEP)
  // The 16-lane build has FMA instructions: this also shows that none was fused in.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl")) {
    CHECK(avx512_transform_mismatches() == 0);
  }
#endif
}
#endif

TEST_CASE("The CPU's batched Gaussian equals gaussian4 bit for bit in every build", "[philox]") {
  const CpuKernels saved = cpu_kernels();
  std::mt19937_64 rng(11);
  for (CpuKernels kernels : {CpuKernels::Portable, CpuKernels::Avx2, CpuKernels::Avx512, CpuKernels::Best}) {
    cpu_kernels() = kernels;
    int mismatches = 0;
    for (int trial = 0; trial < 200; ++trial) {
      const uint64_t key = rng();
      const uint32_t tensor_id = static_cast<uint32_t>(rng() % 1000), probe = static_cast<uint32_t>(rng() % 16);
      const int64_t chunk = static_cast<int64_t>(rng() % (int64_t{1} << 30));
      // z: the batch the sweeps of these kernels use; portable: the loops of the build without
      // dispatch, compiled for this function's target.
      alignas(64) float z[kCpuChunk], portable[kCpuChunk];
      gaussian_chunk<false>(key, tensor_id, probe, chunk, portable);
#if defined(ZOTORCH_CPU_AVX512_SWEEP)
      if (cpu_use_avx512_sweep()) {
        gaussian_chunk<true, true>(key, tensor_id, probe, chunk, z);
      } else
#endif
#if defined(ZOTORCH_CPU_AVX2_DISPATCH)
      if (cpu_use_avx2()) {
        gaussian_chunk<true>(key, tensor_id, probe, chunk, z);
      } else
#endif
      {
        gaussian_chunk<false>(key, tensor_id, probe, chunk, z);
      }
      for (int b = 0; b < kCpuChunk / 4; ++b) {
        const Normals4 ref = gaussian4(noise_block(key, tensor_id, probe, static_cast<uint64_t>(chunk) * 32 + b));
        for (int q = 0; q < 4; ++q) {
          mismatches += float_bits(ref.z[q]) != float_bits(z[4 * b + q]);
          mismatches += float_bits(ref.z[q]) != float_bits(portable[4 * b + q]);
        }
      }
    }
    INFO("kernels " << static_cast<int>(kernels));
    CHECK(mismatches == 0);
  }
  cpu_kernels() = saved;
}
