// The CPU sweep against its definition: a per-element transcription of sweep.h, the same arithmetic
// done with ATen ops on materialised noise, ATen's own float16/bfloat16 rounding, and the
// statistics of stochastic rounding; plus determinism across threads, builds and tensor splits,
// and the errors check_sweepable raises.
#include <zotorch/detail/dispatch.h>
#include <zotorch/fzoo.h>
#include <zotorch/mezo.h>
#include <zotorch/noise.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <catch2/catch.hpp>

#include "skip.h"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

using zotorch::Distribution;
using namespace zotorch::detail;

namespace {

bool bitwise_same(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.numel() * a.element_size()) == 0;
}

/// sweep.h's formula element by element, straight from the element functions: no chunks, no
/// batching; only each term's current Philox block is remembered between elements. The reference
/// every CPU build must match bit for bit.
template <class Storage>
void reference_sweep(const ParamEntry& entry, const SweepPlan& plan) {
  using A = typename Storage::acc;
  auto* data = static_cast<typename Storage::storage*>(entry.tensor.data_ptr());
  const GroupScalars& g = plan.groups[entry.group];
  const bool rademacher = plan.distribution == Distribution::Rademacher;
  const int64_t block_size = rademacher ? kRademacherBlock : kGaussianBlock;
  const bool staged = staged_plan(plan);
  std::vector<Words4> bits(plan.num_terms);
  std::vector<Normals4> normals(plan.num_terms);
  Words4 rounding_bits{}, restore_bits{};
  for (int64_t j = 0; j < entry.tensor.numel(); ++j) {
    const auto block = static_cast<uint64_t>(j / block_size);
    A s = 0, m = 0, v = 0, r = 0;
    for (int k = 0; k < plan.num_terms; ++k) {
      const SweepTerm& t = plan.terms[k];
      if (j % block_size == 0) {
        bits[k] = noise_block(t.key, entry.tensor_id, t.probe, block);
        normals[k] = gaussian4(bits[k]);
      }
      const A c = resolve_coefficient<A>(plan, entry.group, k, staged);
      const A cr = resolve_restore<A>(plan, k, staged);
      if (rademacher) {
        const uint32_t mask = rademacher_sign_mask(bits[k], static_cast<int>(j % kRademacherBlock));
        s = accumulate_sign(s, c, mask);
        if (cr != 0) r = accumulate_sign(r, cr, mask);
        if (plan.adaptive) {
          m = accumulate_sign(m, static_cast<A>(t.m_weight), mask);
          v = add(v, static_cast<A>(t.v_weight));
        }
      } else {
        const float z = normals[k].z[j % kGaussianBlock];
        s = accumulate_value(s, c, z);
        if (cr != 0) r = accumulate_value(r, cr, z);
        if (plan.adaptive) {
          m = accumulate_value(m, static_cast<A>(t.m_weight), z);
          v = accumulate_square(v, static_cast<A>(t.v_weight), z);
        }
      }
    }
    A x = Storage::widen(data[j]);
    if (staged) {  // the restore terms' own rounding, with its own stochastic-rounding stream
      if constexpr (Storage::is_16_bit) {
        if (plan.stochastic_rounding) {
          if (j % kRoundingBlock == 0) {
            restore_bits = noise_block(restore_rounding_key(plan.rounding_key), entry.tensor_id, kRoundingProbe,
                                       static_cast<uint64_t>(j / kRoundingBlock));
          }
          x = restore_value_stochastic<Storage>(x, r, rounding_bits16(restore_bits.w, static_cast<int>(j % kRoundingBlock)));
        } else {
          x = restore_value<Storage>(x, r);
        }
      } else {
        x = restore_value<Storage>(x, r);
      }
    }
    const A y = plan.adaptive ? adaptive_update(static_cast<A>(g.keep), x, s, m, v,
                                                static_cast<A>(g.lr * plan.adaptive_scale),
                                                static_cast<A>(plan.adaptive_stab))
                              : linear_update(static_cast<A>(g.keep), x, s);
    if constexpr (Storage::is_16_bit) {
      if (plan.stochastic_rounding) {
        if (j % kRoundingBlock == 0) {
          rounding_bits = noise_block(plan.rounding_key, entry.tensor_id, kRoundingProbe,
                                      static_cast<uint64_t>(j / kRoundingBlock));
        }
        data[j] = narrow_stochastic<Storage>(y, rounding_bits16(rounding_bits.w, static_cast<int>(j % kRoundingBlock)));
        continue;
      }
    }
    data[j] = Storage::narrow(y);
  }
}

void reference_sweep(const ParamTable& table, const SweepPlan& plan) {
  for (const ParamEntry& entry : table.entries) {
    switch (entry.tensor.scalar_type()) {
      case at::kFloat: reference_sweep<Float32Storage>(entry, plan); break;
      case at::kDouble: reference_sweep<Float64Storage>(entry, plan); break;
      case at::kHalf: reference_sweep<Float16Storage>(entry, plan); break;
      default: reference_sweep<BFloat16Storage>(entry, plan); break;
    }
  }
}

/// A parameter list whose sizes end inside a chunk, exactly on one, inside and across the 8-chunk
/// span and the parallel grain; values from 1e-3 to 1, with an inf, a NaN and fp16-subnormal
/// magnitudes among them.
ParamTable make_table(at::ScalarType dtype, uint64_t seed) {
  const std::vector<int64_t> sizes = {1, 3, 127, 128, 129, 1000, 1024, 1025, 4096, 5000, 20001};
  at::Generator gen = at::detail::createCPUGenerator(seed);
  ParamTable table;
  for (size_t i = 0; i < sizes.size(); ++i) {
    at::Tensor t = at::randn({sizes[i]}, gen, at::kDouble).mul_(i % 3 == 0 ? 1e-3 : 0.5);
    if (i == 4) {
      t[0].fill_(std::numeric_limits<double>::infinity());
      t[1].fill_(std::numeric_limits<double>::quiet_NaN());
    }
    if (i == 5) t.mul_(1e-6);
    table.entries.push_back({t.to(dtype).contiguous(), static_cast<uint32_t>(7 * i + 1), static_cast<int32_t>(i % 2)});
  }
  return table;
}

ParamTable clone_table(const ParamTable& table) {
  ParamTable out;
  for (const ParamEntry& e : table.entries) out.entries.push_back({e.tensor.clone(), e.tensor_id, e.group});
  return out;
}

/// `restores`: terms 0, 3, 6, ... also carry a restore coefficient (a staged sweep).
SweepPlan make_plan(Distribution dist, int terms, bool adaptive, bool stochastic, bool restores = false) {
  SweepPlan plan;
  plan.distribution = dist;
  plan.num_groups = 2;
  plan.groups[0] = {1e-3, 1.0};
  plan.groups[1] = {3e-4, 1.0 - 3e-4 * 0.1};
  plan.adaptive = adaptive;
  plan.adaptive_scale = 100;
  plan.adaptive_stab = 1e-5;
  plan.stochastic_rounding = stochastic;
  plan.rounding_key = 0x1234567890ABCDEFull;
  for (int k = 0; k < terms; ++k) {
    plan.add_term({splitmix64(static_cast<uint64_t>(k) + 99), static_cast<uint32_t>(k), k == 0 ? 1e-3 : -2.5e-4 * k,
                   0.3 / (k + 1), 0.7 / (k + 1), 0.09 / (k + 1), restores && k % 3 == 0 ? -1.1e-3 * (k + 1) : 0.0});
  }
  return plan;
}

/// Element-wise correctly rounded square root. at::sqrt is not one on CPU (LibTorch 2.15 differs
/// from IEEE sqrt on about 20% of float inputs and 1.4% of double inputs), while the sweep and
/// the CUDA kernels use IEEE sqrt.
at::Tensor ieee_sqrt(const at::Tensor& x) {
  at::Tensor out = x.contiguous().clone();
  if (out.scalar_type() == at::kDouble) {
    double* p = out.data_ptr<double>();
    for (int64_t i = 0; i < out.numel(); ++i) p[i] = std::sqrt(p[i]);
  } else {
    float* p = out.data_ptr<float>();
    for (int64_t i = 0; i < out.numel(); ++i) p[i] = std::sqrt(p[i]);
  }
  return out;
}

/// Restores the kernel choice and thread count a test changes.
struct CpuSettingsGuard {
  CpuKernels kernels = cpu_kernels();
  int threads = at::get_num_threads();
  ~CpuSettingsGuard() {
    cpu_kernels() = kernels;
    at::set_num_threads(threads);
  }
};

const char* kernels_name(CpuKernels k) {
  return k == CpuKernels::Best ? "best" : k == CpuKernels::Avx512 ? "avx512" : k == CpuKernels::Avx2 ? "avx2" : "portable";
}

}  // namespace

TEST_CASE("The CPU sweep's parallel_for runs on 2 threads when 2 are set (compiled with OpenMP)", "[sweep][threads]") {
  CpuSettingsGuard guard;
  REQUIRE(kCpuSweepParallel);
  at::set_num_threads(2);
  // The sweep's own at::parallel_for call shape: chunks with the sweep's grain. Only a thread other
  // than the caller can record id 1.
  std::atomic<int> highest{0};
  at::parallel_for(0, 64 * kCpuGrainChunks, kCpuGrainChunks, [&](int64_t, int64_t) {
    int id = at::get_thread_num();
    int seen = highest.load();
    while (id > seen && !highest.compare_exchange_weak(seen, id)) {
    }
  });
  CHECK(highest.load() == 1);
}

TEST_CASE("The CPU sweep equals the per-element definition bit for bit", "[sweep]") {
  CpuSettingsGuard guard;
  // Every dtype, distribution, variant and rounding mode; term counts 0 (decay only), 1 (fused
  // path), 2, 4 (Rademacher: a pair and a single before the fused one), 9 (two groups of four);
  // with and without restore terms (staged sweeps: on the fused term, on stored terms, between
  // groups of four); both thread counts and all kernel builds.
  int cases = 0;
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    const ParamTable start = make_table(dtype, 5);
    for (Distribution dist : {Distribution::Rademacher, Distribution::Gaussian}) {
      for (bool adaptive : {false, true}) {
        for (bool stochastic : {false, true}) {
          if (stochastic && !(dtype == at::kHalf || dtype == at::kBFloat16)) continue;
          for (int terms : {0, 1, 2, 4, 9}) {
           for (bool restores : {false, true}) {
            if (restores && terms == 0) continue;
            const SweepPlan plan = make_plan(dist, terms, adaptive, stochastic, restores);
            REQUIRE(staged_plan(plan) == restores);
            const ParamTable expected = clone_table(start);
            reference_sweep(expected, plan);
            for (CpuKernels kernels : {CpuKernels::Portable, CpuKernels::Avx2, CpuKernels::Avx512, CpuKernels::Best}) {
              for (int threads : {1, 2}) {
                cpu_kernels() = kernels;
                at::set_num_threads(threads);
                const ParamTable swept = clone_table(start);
                apply_sweep(swept, plan);
                for (size_t i = 0; i < swept.entries.size(); ++i) {
                  INFO(dtype << " " << zotorch::to_string(dist) << " adaptive " << adaptive << " stochastic "
                             << stochastic << " terms " << terms << " restores " << restores << " kernels " << kernels_name(kernels)
                             << " threads " << threads << " tensor " << i);
                  REQUIRE(bitwise_same(swept.entries[i].tensor, expected.entries[i].tensor));
                }
                ++cases;
              }
            }
           }
          }
        }
      }
    }
  }
  CHECK(cases == 4 * 2 * 2 * 9 * 8 + 2 * 2 * 2 * 9 * 8);
}

TEST_CASE("Every 16-bit pattern sweeps to the definition's bits in every CPU build, both distributions, both roundings",
          "[sweep][rounding]") {
  // All 65,536 patterns (NaNs with payloads, signalling NaNs, infinities, subnormals, both zeros),
  // three times over so that each meets both signs of z, perturbed by steps from far below the
  // smallest subnormal to far above one ulp; plain and staged sweeps. The vector builds convert in
  // hardware or in vector integer code; this is where they could differ from the element functions.
  CpuSettingsGuard guard;
  for (auto dtype : {at::kHalf, at::kBFloat16}) {
    at::Tensor patterns = at::arange(0, 3 * 65536, at::kInt).remainder_(65536).to(at::kShort);
    ParamTable start;
    start.entries.push_back({patterns.view(dtype).contiguous(), 3, 0});
    for (double eps : {1e-40, 1e-30, 1e-7, 3e-3, 7.0}) {
     for (Distribution dist : {Distribution::Rademacher, Distribution::Gaussian}) {
      for (bool stochastic : {false, true}) {
        for (bool restores : {false, true}) {
          SweepPlan plan;
          plan.distribution = dist;
          plan.stochastic_rounding = stochastic;
          plan.rounding_key = 0x5eed;
          plan.groups[0].lr = 1.0;
          plan.groups[0].keep = restores ? 0.999 : 1.0;
          plan.add_term(SweepTerm{11, 0, eps, 0, 0, 0, 0});
          if (restores) plan.add_term(SweepTerm{12, 1, 0, 0, 0, 0, -eps});
          const ParamTable expected = clone_table(start);
          reference_sweep(expected, plan);
          for (CpuKernels kernels : {CpuKernels::Portable, CpuKernels::Avx2, CpuKernels::Avx512, CpuKernels::Best}) {
            cpu_kernels() = kernels;
            const ParamTable swept = clone_table(start);
            apply_sweep(swept, plan);
            INFO(dtype << " eps " << eps << " " << zotorch::to_string(dist) << " stochastic " << stochastic << " staged "
                       << restores << " kernels " << kernels_name(kernels));
            CHECK(bitwise_same(swept.entries[0].tensor, expected.entries[0].tensor));
          }
        }
      }
     }
    }
  }
}

#if defined(ZOTORCH_CPU_AVX512_SWEEP)
namespace {
struct Bf16HardwareCount {
  uint64_t differing_normal = 0;     // lanes that are not float32 subnormals and differ: must be 0
  uint64_t differing_subnormal = 0;  // subnormal lanes the instruction alone gets wrong
  uint64_t fallbacks = 0;            // vectors narrow16_bf16_hardware refused
};

/// vcvtneps2bf16 against narrow16_avx512<BFloat16Storage> on every float32 pattern, 16 at a time.
ZOTORCH_CPU_AVX512_TARGET Bf16HardwareCount compare_bf16_hardware_all_patterns() {
  Bf16HardwareCount count;
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (uint64_t base = 0; base < (uint64_t{1} << 32); base += 16) {
    const __m512 x = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(base)), lane));
    __m256i hardware;
    __asm__("vcvtneps2bf16 %1, %0" : "=v"(hardware) : "v"(x));
    const __m256i integer = _mm512_cvtepi32_epi16(narrow16_avx512<BFloat16Storage>(x));
    const __mmask16 differ = static_cast<__mmask16>(~_mm256_cmpeq_epi16_mask(hardware, integer));
    const __mmask16 subnormal = _mm512_fpclass_ps_mask(x, 0x20);
    count.differing_normal += static_cast<uint64_t>(__builtin_popcount(differ & ~subnormal & 0xFFFFu));
    count.differing_subnormal += static_cast<uint64_t>(__builtin_popcount(differ & subnormal));
    __m256i packed;
    if (!narrow16_bf16_hardware(x, packed)) {
      ++count.fallbacks;
    } else if (static_cast<__mmask16>(~_mm256_cmpeq_epi16_mask(packed, integer)) != 0) {
      ++count.differing_normal;
    }
  }
  return count;
}
}  // namespace
#endif

TEST_CASE("AVX512-BF16's conversion equals the bfloat16 rounding on all 2^32 float32 patterns except subnormals, "
          "which fall back",
          "[sweep][rounding]") {
#if defined(ZOTORCH_CPU_AVX512_SWEEP)
  if (!__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512dq") || !__builtin_cpu_supports("avx512vl")) {
    ZOTORCH_SKIP_TEST("this CPU has no AVX512-BF16");
  }
  const Bf16HardwareCount count = compare_bf16_hardware_all_patterns();
  CHECK(count.differing_normal == 0);
  // The instruction reads subnormals as zero, so the fallback is needed.
  CHECK(count.differing_subnormal > 0);
  // Every vector of 16 consecutive patterns with a subnormal lane: 2 × 2^23 / 16 of them.
  CHECK(count.fallbacks == 2 * (uint64_t{1} << 23) / 16);
#else
  ZOTORCH_SKIP_TEST("built without the AVX-512 sweep (GCC on x86-64 only)");
#endif
}

#if defined(ZOTORCH_CPU_AVX512_SWEEP)
namespace {
struct VectorRoundingCount {
  uint64_t lanes = 0;
  uint64_t differing = 0;
  uint64_t nan_lanes = 0;
};

/// The vector stochastic roundings of the AVX-512 pass against narrow_stochastic and
/// restore_value_stochastic, lane by lane, on float32 patterns spread over the whole range
/// (every sign, exponent and NaN payload class) with pseudo-random 16-bit draws: the bfloat16 pair
/// path (BFloat16Pairs) and float16's store and restore (store16_avx512 / restored16_avx512 with
/// their conversion-toward-zero and carry fast paths). The sweeps themselves never produce a NaN
/// with a payload in its lower half, so only this reaches those lanes.
ZOTORCH_CPU_AVX512_TARGET VectorRoundingCount compare_vector_stochastic_rounding() {
  VectorRoundingCount count;
  uint32_t state = 12345u;
  const auto next = [&state] { return state = state * 1664525u + 1013904223u; };
  alignas(64) uint32_t patterns[32], words[16], restore_words[16];
  alignas(64) float half_r[16];
  alignas(64) uint16_t draws16[16], restore_draws16[16], stored[32], fp16_out[16];
  alignas(64) float widened[32];
  for (uint64_t base = 0; base < (uint64_t{1} << 32); base += 32 * 4093) {
    for (int k = 0; k < 32; ++k) patterns[k] = static_cast<uint32_t>(base + static_cast<uint64_t>(k) * 127u) ^ (next() & 0xFFFFu);
    for (int k = 0; k < 16; ++k) words[k] = next(), restore_words[k] = next();
    for (int k = 0; k < 16; ++k) half_r[k] = bit_cast<float>(patterns[k]) * 0.001f;
    // bfloat16 pairs: element 2k is lane k of `even`, 2k + 1 lane k of `odd`.
    alignas(64) uint32_t even_bits[16], odd_bits[16];
    for (int k = 0; k < 16; ++k) even_bits[k] = patterns[2 * k], odd_bits[k] = patterns[2 * k + 1];
    const __m512 even = _mm512_castsi512_ps(_mm512_load_si512(even_bits));
    const __m512 odd = _mm512_castsi512_ps(_mm512_load_si512(odd_bits));
    const __m512i packed = BFloat16Pairs::narrow(even, odd, _mm512_load_si512(words));
    _mm512_store_si512(stored, packed);
    const __m512i restore_draws = _mm512_and_si512(_mm512_load_si512(restore_words), _mm512_set1_epi32(0xFFFF));
    _mm512_store_ps(widened, BFloat16Pairs::restored(even, _mm512_load_ps(half_r), restore_draws));
    for (int k = 0; k < 32; ++k) {
      const uint32_t draw = (words[k / 2] >> (16 * (k % 2))) & 0xFFFFu;
      count.differing += stored[k] != narrow_stochastic<BFloat16Storage>(bit_cast<float>(patterns[k]), draw);
      count.nan_lanes += std::isnan(bit_cast<float>(patterns[k]));
    }
    for (int k = 0; k < 16; ++k) {
      const float expected =
          restore_value_stochastic<BFloat16Storage>(bit_cast<float>(even_bits[k]), half_r[k], restore_words[k] & 0xFFFFu);
      count.differing += bit_cast<uint32_t>(widened[k]) != bit_cast<uint32_t>(expected);
    }
    // float16, 16 consecutive lanes.
    for (int k = 0; k < 16; ++k) draws16[k] = static_cast<uint16_t>(words[k]), restore_draws16[k] = static_cast<uint16_t>(restore_words[k]);
    const __m512 y = _mm512_castsi512_ps(_mm512_load_si512(patterns));
    store16_avx512<Float16Storage, true>(fp16_out, y, draws16);
    _mm512_store_ps(widened, restored16_avx512<Float16Storage, true>(y, _mm512_load_ps(half_r), restore_draws16));
    for (int k = 0; k < 16; ++k) {
      const float x = bit_cast<float>(patterns[k]);
      count.differing += fp16_out[k] != narrow_stochastic<Float16Storage>(x, draws16[k]);
      const float expected = restore_value_stochastic<Float16Storage>(x, half_r[k], restore_draws16[k]);
      count.differing += bit_cast<uint32_t>(widened[k]) != bit_cast<uint32_t>(expected);
    }
    count.lanes += 32 + 16 + 16 + 16;
  }
  return count;
}
}  // namespace
#endif

TEST_CASE("The AVX-512 stochastic roundings equal narrow_stochastic on float32 patterns, NaN payloads included",
          "[sweep][rounding]") {
#if defined(ZOTORCH_CPU_AVX512_SWEEP)
  if (!cpu_use_avx512_sweep()) {
    ZOTORCH_SKIP_TEST("this CPU has no AVX-512F/BW/DQ/VL and BMI2");
  }
  const VectorRoundingCount count = compare_vector_stochastic_rounding();
  INFO(count.lanes << " lanes, " << count.nan_lanes << " bfloat16 lanes NaN");
  CHECK(count.lanes > 2000000);
  CHECK(count.nan_lanes > 1000);
  CHECK(count.differing == 0);
#else
  ZOTORCH_SKIP_TEST("built without the AVX-512 sweep (GCC on x86-64 only)");
#endif
}

#if defined(ZOTORCH_CPU_AVX2_DISPATCH)
namespace {
struct Avx2RoundingCount {
  uint64_t lanes = 0;
  uint64_t differing = 0;
  uint64_t nan_lanes = 0;
  uint64_t float16_normal_vectors = 0;  // vectors that took float16's conversion-toward-zero path
};

/// The roundings of the AVX2 16-bit pass against the element functions, lane by lane, on 8
/// float32 patterns: store16_avx2 (to nearest and stochastic) against narrow / narrow_stochastic,
/// restored16_avx2 against restore_value(_stochastic), and load_widen16_avx2 of every stored result
/// against Storage::widen.
template <class Storage>
ZOTORCH_CPU_AVX2_F16C_TARGET ZOTORCH_CPU_NO_CONTRACT void compare_avx2_roundings_of(const uint32_t* patterns, const float* r,
                                                                           const uint32_t* draws,
                                                                           const uint32_t* restore_draws,
                                                                           Avx2RoundingCount& count) {
  alignas(32) uint16_t nearest[8], stochastic[8];
  alignas(32) float widened[8], restored[8], restored_stochastic[8];
  const __m256 y = _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(patterns)));
  const __m256 r_v = _mm256_load_ps(r);
  const __m256i draws_v = _mm256_load_si256(reinterpret_cast<const __m256i*>(draws));
  const __m256i restore_draws_v = _mm256_load_si256(reinterpret_cast<const __m256i*>(restore_draws));
  store16_avx2<Storage, false>(nearest, y, _mm256_setzero_si256());
  store16_avx2<Storage, true>(stochastic, y, draws_v);
  _mm256_store_ps(restored, restored16_avx2<Storage, false>(y, r_v, _mm256_setzero_si256()));
  _mm256_store_ps(restored_stochastic, restored16_avx2<Storage, true>(y, r_v, restore_draws_v));
  for (int k = 0; k < 8; ++k) {
    const float x = bit_cast<float>(patterns[k]);
    count.differing += nearest[k] != Storage::narrow(x);
    count.differing += stochastic[k] != narrow_stochastic<Storage>(x, draws[k]);
    count.differing += bit_cast<uint32_t>(restored[k]) != bit_cast<uint32_t>(restore_value<Storage>(x, r[k]));
    count.differing += bit_cast<uint32_t>(restored_stochastic[k]) !=
                       bit_cast<uint32_t>(restore_value_stochastic<Storage>(x, r[k], restore_draws[k]));
    count.nan_lanes += std::isnan(x);
  }
  for (const uint16_t* stored : {nearest, stochastic}) {
    _mm256_store_ps(widened, load_widen16_avx2<Storage>(stored));
    for (int k = 0; k < 8; ++k) count.differing += bit_cast<uint32_t>(widened[k]) != bit_cast<uint32_t>(Storage::widen(stored[k]));
  }
  if constexpr (std::is_same_v<Storage, Float16Storage>) {
    count.float16_normal_vectors += float16_normal_lanes_avx2(_mm256_castps_si256(y));
  }
  count.lanes += 8 * 6;
}

Avx2RoundingCount compare_avx2_roundings() {
  Avx2RoundingCount count;
  uint32_t state = 54321u;
  const auto next = [&state] { return state = state * 1664525u + 1013904223u; };
  alignas(32) uint32_t patterns[8], draws[8], restore_draws[8];
  alignas(32) float r[8];
  for (uint64_t base = 0; base < (uint64_t{1} << 32); base += 8 * 4093) {
    for (int k = 0; k < 8; ++k) {
      patterns[k] = static_cast<uint32_t>(base + static_cast<uint64_t>(k) * 509u) ^ (next() & 0xFFFFu);
      draws[k] = next() >> 16;
      restore_draws[k] = next() >> 16;
      r[k] = bit_cast<float>(patterns[k]) * 0.001f;
    }
    compare_avx2_roundings_of<BFloat16Storage>(patterns, r, draws, restore_draws, count);
    compare_avx2_roundings_of<Float16Storage>(patterns, r, draws, restore_draws, count);
    // Vectors of float16-sized weights as well, so that its normal-range paths are taken.
    for (int k = 0; k < 8; ++k) {
      const float weight = bit_cast<float>(0x38800000u + ((patterns[k] >> 4) % (0x477FE000u - 0x38800000u))) *
                           ((patterns[k] & 1u) != 0u ? -1.0f : 1.0f);
      patterns[k] = bit_cast<uint32_t>(weight);
      r[k] = weight * 0.001f;
    }
    compare_avx2_roundings_of<Float16Storage>(patterns, r, draws, restore_draws, count);
  }
  return count;
}
}  // namespace
#endif

TEST_CASE("The AVX2 16-bit roundings equal the element functions on float32 patterns, NaN payloads included",
          "[sweep][rounding]") {
#if defined(ZOTORCH_CPU_AVX2_DISPATCH)
  if (!cpu_use_avx2_f16c()) {
    ZOTORCH_SKIP_TEST("this CPU has no AVX2 and F16C");
  }
  const Avx2RoundingCount count = compare_avx2_roundings();
  INFO(count.lanes << " lanes, " << count.nan_lanes << " NaN, " << count.float16_normal_vectors
                   << " vectors in float16's normal range");
  CHECK(count.lanes > 5000000);
  CHECK(count.nan_lanes > 1000);
  CHECK(count.float16_normal_vectors > 100000);
  CHECK(count.differing == 0);
#else
  ZOTORCH_SKIP_TEST("built without the AVX2 kernels (GCC or Clang on x86-64 only)");
#endif
}

TEST_CASE("A staged sweep equals a restore sweep followed by a sweep of the rest, bit for bit", "[sweep][staged]") {
  // The fused transition's rule (sweep.h): restore terms are rounded first, as a separate restore
  // sweep stores them. Every dtype and variant; with stochastic rounding the restore rounding draws
  // from restore_rounding_key, so two sweeps keyed that way give the same bits.
  CpuSettingsGuard guard;
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    const ParamTable start = make_table(dtype, 17);
    for (Distribution dist : {Distribution::Rademacher, Distribution::Gaussian}) {
      for (bool adaptive : {false, true}) {
        for (bool stochastic : {false, true}) {
          if (stochastic && !(dtype == at::kHalf || dtype == at::kBFloat16)) continue;
          for (int terms : {1, 2, 4, 9}) {
            const SweepPlan fused = make_plan(dist, terms, adaptive, stochastic, true);
            SweepPlan restore = fused, rest = fused;
            restore.adaptive = false;
            restore.rounding_key = restore_rounding_key(fused.rounding_key);
            restore.num_terms = 0;
            for (int g = 0; g < restore.num_groups; ++g) restore.groups[g].keep = 1;
            for (int k = 0; k < fused.num_terms; ++k) {
              const SweepTerm& t = fused.terms[k];
              if (t.restore != 0) restore.add_term({t.key, t.probe, t.restore, 0, 0, 0});
              rest.terms[k].restore = 0;
            }
            const ParamTable expected = clone_table(start);
            apply_sweep(expected, restore);
            apply_sweep(expected, rest);
            for (CpuKernels kernels : {CpuKernels::Portable, CpuKernels::Avx2, CpuKernels::Avx512, CpuKernels::Best}) {
              cpu_kernels() = kernels;
              const ParamTable swept = clone_table(start);
              apply_sweep(swept, fused);
              for (size_t i = 0; i < swept.entries.size(); ++i) {
                INFO(dtype << " " << zotorch::to_string(dist) << " adaptive " << adaptive << " stochastic "
                           << stochastic << " terms " << terms << " kernels " << kernels_name(kernels) << " tensor "
                           << i);
                REQUIRE(bitwise_same(swept.entries[i].tensor, expected.entries[i].tensor));
              }
            }
          }
        }
      }
    }
  }
}

TEST_CASE("A plan of restore terms alone is a plain one-rounding restore sweep", "[sweep][staged]") {
  // Step::restore() (and a skipped step) sends restore terms only: not staged, the same bits as the
  // same offsets spelt as alpha.
  for (auto dtype : {at::kFloat, at::kHalf}) {
    for (Distribution dist : {Distribution::Rademacher, Distribution::Gaussian}) {
      SweepPlan as_restore, as_alpha;
      as_restore.distribution = as_alpha.distribution = dist;
      as_restore.stochastic_rounding = as_alpha.stochastic_rounding = true;
      as_restore.rounding_key = as_alpha.rounding_key = 42;
      as_restore.num_groups = as_alpha.num_groups = 2;  // make_table's tensors are in groups 0 and 1
      as_restore.add_term({5, 2, 0, 0, 0, 0, -1e-3});
      as_alpha.add_term({5, 2, -1e-3, 0, 0, 0});
      CHECK(!staged_plan(as_restore));
      const ParamTable start = make_table(dtype, 3);
      const ParamTable a = clone_table(start), b = clone_table(start);
      apply_sweep(a, as_restore);
      apply_sweep(b, as_alpha);
      for (size_t i = 0; i < a.entries.size(); ++i) CHECK(bitwise_same(a.entries[i].tensor, b.entries[i].tensor));
    }
  }
}

namespace {

/// One sweep of `terms` over `table` as a step of the optimizers would send it, without fusing:
/// groups {lr, keep} as given when `decay`, keep = 1 otherwise.
void plain_sweep(const ParamTable& table, Distribution dist, const std::vector<SweepTerm>& terms,
                 const std::vector<GroupScalars>& groups, bool decay) {
  SweepPlan plan;
  plan.distribution = dist;
  plan.num_groups = static_cast<int32_t>(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) plan.groups[g] = {groups[g].lr, decay ? groups[g].keep : 1.0};
  for (const SweepTerm& t : terms) plan.add_term(t);
  apply_sweep(table, plan);
}

/// Two float32 tensors in two param groups (decay on the first), and a closure over them. The
/// tensors require grad, as trainable parameters do (the optimizers skip frozen ones).
struct TwoGroups {
  at::Tensor a = (at::randn({3000}) * 0.02).contiguous().requires_grad_(true);
  at::Tensor b = (at::randn({1111}) * 0.5).contiguous().requires_grad_(true);
  ParamTable naive;
  TwoGroups() {
    naive.entries.push_back({a.detach().clone(), 0, 0});
    naive.entries.push_back({b.detach().clone(), 1, 1});
  }
  at::Tensor loss() const {
    at::NoGradGuard no_grad;
    return (a - 0.01).square().sum() + (b * b * b).sum();
  }
  bool same() const {
    return bitwise_same(a, naive.entries[0].tensor) && bitwise_same(b, naive.entries[1].tensor);
  }
};

}  // namespace

TEST_CASE("FZOO's fused probe transitions equal separate restore and perturb sweeps bit for bit over 200 float32 steps",
          "[sweep][staged][fzoo]") {
  // The naive sequence: +εu_0, then per probe i a restore sweep −εu_{i−1} and a perturb sweep
  // +εu_i, then a restore sweep −εu_{N−1} and the update sweep −η Σ c_i u_i − ηλθ. ε = 1e-3 and
  // 3e-4 are not powers of two, so every one of those roundings is a real one.
  for (double eps : {1e-3, 3e-4, std::ldexp(1.0, -10)}) {
    TwoGroups p;
    const std::vector<GroupScalars> groups = {{2e-3, 1.0 - 2e-3 * 0.1}, {1e-3, 1.0}};
    std::vector<torch::optim::OptimizerParamGroup> param_groups;
    param_groups.emplace_back(std::vector<at::Tensor>{p.a},
                              std::make_unique<zotorch::FZOOOptions>(zotorch::FZOOOptions(2e-3).eps(eps).weight_decay(0.1).num_perturbations(4).seed(9)));
    param_groups.emplace_back(std::vector<at::Tensor>{p.b},
                              std::make_unique<zotorch::FZOOOptions>(zotorch::FZOOOptions(1e-3).eps(eps).num_perturbations(4).seed(9)));
    zotorch::FZOO opt(param_groups, zotorch::FZOOOptions(1e-3).eps(eps).num_perturbations(4).seed(9));
    const uint32_t n = 4;
    int64_t updates = 0;
    for (int step = 0; step < 200; ++step) {
      opt.step([&] { return p.loss(); });
      const zotorch::StepReport& r = opt.last_step();
      const auto rad = Distribution::Rademacher;
      plain_sweep(p.naive, rad, {{r.key, 0, eps, 0, 0, 0}}, groups, false);
      for (uint32_t i = 1; i < n; ++i) {
        plain_sweep(p.naive, rad, {{r.key, i - 1, -eps, 0, 0, 0}}, groups, false);
        plain_sweep(p.naive, rad, {{r.key, i, eps, 0, 0, 0}}, groups, false);
      }
      plain_sweep(p.naive, rad, {{r.key, n - 1, -eps, 0, 0, 0}}, groups, false);
      if (!r.skipped) {
        std::vector<SweepTerm> update;
        for (uint32_t i = 0; i < n; ++i) update.push_back({r.key, i, 0, -r.coefficients[i], 0, 0});
        plain_sweep(p.naive, rad, update, groups, true);
        ++updates;
      }
      INFO("eps " << eps << " step " << step);
      REQUIRE(p.same());
    }
    CHECK(updates == 200);
  }
}

TEST_CASE("MeZO's fused transitions equal separate restore and perturb sweeps bit for bit over 200 float32 steps",
          "[sweep][staged][mezo]") {
  // θ+εz_k → θ−εz_k is a restore sweep −εz_k then a perturb sweep −εz_k, not one −2εz_k sweep.
  for (Distribution dist : {Distribution::Rademacher, Distribution::Gaussian}) {
    const double eps = 1e-3;
    TwoGroups p;
    const std::vector<GroupScalars> groups = {{1e-4, 1.0 - 1e-4 * 0.1}, {5e-5, 1.0}};
    std::vector<torch::optim::OptimizerParamGroup> param_groups;
    auto options = [&](double lr, double decay) {
      return std::make_unique<zotorch::MeZOOptions>(
          zotorch::MeZOOptions(lr).eps(eps).weight_decay(decay).num_samples(2).distribution(dist).seed(4));
    };
    param_groups.emplace_back(std::vector<at::Tensor>{p.a}, options(1e-4, 0.1));
    param_groups.emplace_back(std::vector<at::Tensor>{p.b}, options(5e-5, 0.0));
    zotorch::MeZO opt(param_groups, *options(1e-4, 0.0));
    for (int step = 0; step < 200; ++step) {
      opt.step([&] { return p.loss(); });
      const zotorch::StepReport& r = opt.last_step();
      for (uint32_t k = 0; k < 2; ++k) {
        if (k > 0) plain_sweep(p.naive, dist, {{r.key, k - 1, eps, 0, 0, 0}}, groups, false);
        plain_sweep(p.naive, dist, {{r.key, k, eps, 0, 0, 0}}, groups, false);
        plain_sweep(p.naive, dist, {{r.key, k, -eps, 0, 0, 0}}, groups, false);
        plain_sweep(p.naive, dist, {{r.key, k, -eps, 0, 0, 0}}, groups, false);
      }
      plain_sweep(p.naive, dist, {{r.key, 1, eps, 0, 0, 0}}, groups, false);
      plain_sweep(p.naive, dist, {{r.key, 0, 0, -r.coefficients[0] / 2, 0, 0}, {r.key, 1, 0, -r.coefficients[1] / 2, 0, 0}},
                  groups, true);
      INFO(zotorch::to_string(dist) << " step " << step);
      REQUIRE(p.same());
    }
  }
}

TEST_CASE("A tensor's sweep does not depend on the other tensors in the table", "[sweep]") {
  // Tensor id 5 alone, then among many small tensors whose sizes shift its chunk boundaries
  // relative to the global chunk grid and the threads' ranges.
  CpuSettingsGuard guard;
  for (Distribution dist : {Distribution::Rademacher, Distribution::Gaussian}) {
    const SweepPlan plan = make_plan(dist, 3, false, false);
    const at::Tensor start = at::randn({33333});
    ParamTable alone;
    alone.entries.push_back({start.clone(), 5, 0});
    apply_sweep(alone, plan);
    for (int threads : {1, 2}) {
      at::set_num_threads(threads);
      ParamTable crowd;
      for (int i = 0; i < 300; ++i) crowd.entries.push_back({at::randn({1 + (i * 37) % 300}), static_cast<uint32_t>(100 + i), 0});
      crowd.entries.insert(crowd.entries.begin() + 150, ParamEntry{start.clone(), 5, 0});
      crowd.entries.push_back(ParamEntry{at::empty({0}), 999, 0});  // an empty tensor is skipped
      apply_sweep(crowd, plan);
      INFO(zotorch::to_string(dist) << " threads " << threads);
      CHECK(bitwise_same(crowd.entries[150].tensor, alone.entries[0].tensor));
    }
  }
}

TEST_CASE("A linear sweep equals ATen arithmetic on materialised noise", "[sweep]") {
  // s = Σ_k c_k·z_k accumulated term by term, then keep·θ + s: each an explicit ATen mul or add
  // (ATen's add with alpha may fuse into an fma; separate ops do not). Coefficients are
  // representable in float, so float32 and float64 resolve them identically.
  const uint64_t key = zotorch::step_key(77, 3);
  const std::vector<double> alphas = {0.0078125, -0.0009765625, 0.25};
  const std::vector<double> betas = {0.5, 1.5, -3.0};
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    for (Distribution dist : {Distribution::Rademacher, Distribution::Gaussian}) {
      SweepPlan plan;
      plan.distribution = dist;
      plan.groups[0] = {0.125, 0.984375};  // lr, keep = 1 − lr·0.125
      for (size_t k = 0; k < alphas.size(); ++k) {
        plan.add_term({key, static_cast<uint32_t>(k), alphas[k], betas[k], 0, 0});
      }
      const at::ScalarType acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
      const at::Tensor theta = at::randn({3, 1111}, at::kDouble).to(dtype);
      at::Tensor s = at::zeros({3, 1111}, acc);
      for (size_t k = 0; k < alphas.size(); ++k) {
        const double c = 0.984375 * alphas[k] + 0.125 * betas[k];  // exact in float
        const at::Tensor z = zotorch::noise(key, 8, static_cast<int64_t>(k), {3, 1111}, dist, acc);
        s = at::add(s, at::mul(z, at::scalar_tensor(c, acc)));
      }
      const at::Tensor expected = at::add(at::mul(theta.to(acc), at::scalar_tensor(0.984375, acc)), s).to(dtype);
      ParamTable table;
      table.entries.push_back({theta.clone(), 8, 0});
      apply_sweep(table, plan);
      INFO(dtype << " " << zotorch::to_string(dist));
      CHECK(bitwise_same(table.entries[0].tensor, expected));
    }
  }
}

TEST_CASE("The adaptive sweep equals ATen's AdaMeZO update on materialised noise", "[sweep]") {
  // θ ← keep·θ + s − step·m / (√v + stab) with m = Σ w_k z_k, v = Σ u_k z_k² in the arithmetic type.
  const uint64_t key = zotorch::step_key(5, 5);
  const int window = 4;
  for (auto dtype : {at::kFloat, at::kDouble}) {
    for (Distribution dist : {Distribution::Rademacher, Distribution::Gaussian}) {
      SweepPlan plan;
      plan.distribution = dist;
      plan.adaptive = true;
      plan.adaptive_scale = 100;
      plan.adaptive_stab = 1e-5;
      plan.groups[0] = {1e-4, 1.0};
      plan.add_term({key, 0, 1e-3, 0, 0.7 * 0.25, 0.9 * 0.0625});  // restore +eps·z_0 and window entry 0
      for (int k = 1; k < window; ++k) {
        plan.add_term({key, static_cast<uint32_t>(k), 0, 0, std::pow(0.7, k) * 0.5, std::pow(0.9, k) * 0.25});
      }
      const at::Tensor theta = at::randn({2000}, at::kDouble).to(dtype);
      // The scalars as resolve_group rounds them to the arithmetic type.
      auto scalar = [&](double value) {
        return at::scalar_tensor(dtype == at::kDouble ? value : static_cast<double>(static_cast<float>(value)), dtype);
      };
      auto coefficient = [&](int k) {
        return dtype == at::kDouble ? resolve_coefficient<double>(plan, 0, k, false)
                                    : static_cast<double>(resolve_coefficient<float>(plan, 0, k, false));
      };
      at::Tensor s = at::zeros({2000}, dtype), m = at::zeros({2000}, dtype), v = at::zeros({2000}, dtype);
      for (int k = 0; k < window; ++k) {
        const at::Tensor z = zotorch::noise(key, 2, k, {2000}, dist, dtype);
        s = at::add(s, at::mul(z, scalar(coefficient(k))));
        m = at::add(m, at::mul(z, scalar(plan.terms[k].m_weight)));
        v = at::add(v, at::mul(at::mul(z, z), scalar(plan.terms[k].v_weight)));
      }
      const at::Tensor stepped = at::mul(at::div(m, at::add(ieee_sqrt(v), scalar(plan.adaptive_stab))),
                                         scalar(plan.groups[0].lr * plan.adaptive_scale));
      const at::Tensor expected = at::sub(at::add(at::mul(theta, scalar(1.0)), s), stepped);
      ParamTable table;
      table.entries.push_back({theta.clone(), 2, 0});
      apply_sweep(table, plan);
      INFO(dtype << " " << zotorch::to_string(dist));
      CHECK(bitwise_same(table.entries[0].tensor, expected));
    }
  }
}

TEST_CASE("16-bit round-to-nearest equals ATen's conversion, subnormals and overflow included", "[sweep]") {
  // Every float whose top 16 bits are any pattern, with low halves at and around the halfway
  // points; then 2^20 random floats; then the edges of both formats.
  std::vector<uint32_t> patterns;
  for (uint32_t high = 0; high < 0x10000u; ++high) {
    for (uint32_t low : {0x0000u, 0x0001u, 0x0FFFu, 0x1000u, 0x1001u, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu}) {
      patterns.push_back((high << 16) | low);
    }
  }
  std::mt19937 rng(12);
  for (int i = 0; i < (1 << 20); ++i) patterns.push_back(rng());
  const at::Tensor floats = at::from_blob(patterns.data(), {static_cast<int64_t>(patterns.size())}, at::kInt)
                                .clone()
                                .view(at::kFloat);
  const float* f = floats.data_ptr<float>();
  const at::Tensor half = floats.to(at::kHalf), bf16 = floats.to(at::kBFloat16);
  const auto* h = reinterpret_cast<const uint16_t*>(half.data_ptr());
  const auto* b = reinterpret_cast<const uint16_t*>(bf16.data_ptr());
  int64_t half_mismatch = 0, bf16_mismatch = 0;
  for (int64_t i = 0; i < floats.numel(); ++i) {
    if (std::isnan(f[i])) {
      half_mismatch += !std::isnan(Float16Storage::widen(Float16Storage::narrow(f[i])));
      bf16_mismatch += !std::isnan(BFloat16Storage::widen(BFloat16Storage::narrow(f[i])));
      continue;
    }
    half_mismatch += Float16Storage::narrow(f[i]) != h[i];
    bf16_mismatch += BFloat16Storage::narrow(f[i]) != b[i];
  }
  CHECK(half_mismatch == 0);
  CHECK(bf16_mismatch == 0);
  // Widening is exact: all 65536 patterns of each type against ATen.
  const at::Tensor all16 = at::arange(0, 65536, at::kInt).to(at::kShort);
  const at::Tensor half_wide = all16.view(at::kHalf).to(at::kFloat), bf16_wide = all16.view(at::kBFloat16).to(at::kFloat);
  for (int i = 0; i < 65536; ++i) {
    const auto bits = static_cast<uint16_t>(i);
    const float ours_h = Float16Storage::widen(bits), ours_b = BFloat16Storage::widen(bits);
    const float theirs_h = half_wide.data_ptr<float>()[i], theirs_b = bf16_wide.data_ptr<float>()[i];
    if (std::isnan(theirs_h)) {
      REQUIRE(std::isnan(ours_h));
    } else {
      REQUIRE(std::memcmp(&ours_h, &theirs_h, 4) == 0);
    }
    if (std::isnan(theirs_b)) {
      REQUIRE(std::isnan(ours_b));
    } else {
      REQUIRE(std::memcmp(&ours_b, &theirs_b, 4) == 0);
    }
  }
  CHECK(Float16Storage::narrow(65519.996f) == 0x7BFFu);  // largest half
  CHECK(Float16Storage::narrow(65520.0f) == 0x7C00u);    // halfway to the next: rounds to inf
  CHECK(Float16Storage::narrow(std::ldexp(1.0f, -25)) == 0x0000u);          // tie with 0: even
  CHECK(Float16Storage::narrow(std::ldexp(1.5f, -25)) == 0x0001u);          // smallest subnormal
  CHECK(BFloat16Storage::narrow(std::numeric_limits<float>::max()) == 0x7F80u);
}

namespace {

/// Mean over n elements of z·(widen(rounded θ + c·z) − (θ + c·z)), for θ = 1 and a Rademacher z,
/// under `rounds` different rounding keys; also its standard error. Weighting by z makes the
/// errors of both signs count the same way: round-to-nearest toward 1 gives exactly −c.
std::pair<double, double> rounding_bias(at::ScalarType dtype, double c, int64_t n, int rounds, bool stochastic) {
  double sum = 0, sum_sq = 0;
  for (int r = 0; r < rounds; ++r) {
    ParamTable table;
    table.entries.push_back({at::ones({n}, dtype), 3, 0});
    SweepPlan plan;
    plan.distribution = Distribution::Rademacher;
    plan.stochastic_rounding = stochastic;
    plan.rounding_key = splitmix64(static_cast<uint64_t>(r) + 1000);
    plan.add_term({99, 0, c, 0, 0, 0});
    apply_sweep(table, plan);
    const at::Tensor z = zotorch::noise(99, 3, 0, {n}, Distribution::Rademacher, at::kDouble);
    const at::Tensor error = (table.entries[0].tensor.to(at::kDouble) - (1.0 + c * z)) * z;
    sum += error.sum().item<double>();
    sum_sq += error.pow(2).sum().item<double>();
  }
  const double count = static_cast<double>(n) * rounds;
  const double mean = sum / count;
  return {mean, std::sqrt((sum_sq / count - mean * mean) / count)};
}

}  // namespace

TEST_CASE("Stochastic rounding to 16 bits is unbiased, round-to-nearest is not", "[sweep][rounding]") {
  // 1 ± c with c a fraction of the gap just above 1 (2^-7 for bfloat16, 2^-10 for float16):
  // neither 1 + c nor 1 − c is representable, so every element is rounded.
  for (double fraction : {0.1, 0.37, 0.5, 0.8}) {
    {
      const double c = fraction * std::ldexp(1.0, -7);
      const auto [bias, error] = rounding_bias(at::kBFloat16, c, 1 << 16, 4, true);
      INFO("bfloat16, c = " << fraction << " gap: bias " << bias << " ± " << error);
      CHECK(std::abs(bias) < 5 * error);
      CHECK(error > 0);
    }
    {
      const double c = fraction * std::ldexp(1.0, -10);
      const auto [bias, error] = rounding_bias(at::kHalf, c, 1 << 16, 4, true);
      INFO("float16, c = " << fraction << " gap: bias " << bias << " ± " << error);
      CHECK(std::abs(bias) < 5 * error);
    }
  }
  // Control: the same experiment with round-to-nearest is biased by exactly −c (1 + 0.1 gap rounds
  // down to 1; 1 − 0.1 gap, a fifth of the half-size gap below 1, rounds up to 1).
  const double c = 0.1 * std::ldexp(1.0, -7);
  const auto [bias, error] = rounding_bias(at::kBFloat16, c, 1 << 16, 1, false);
  CHECK(bias == Approx(-c).epsilon(1e-9));
  CHECK(error < 1e-9);
}

TEST_CASE("Stochastic rounding lets updates far below one ulp accumulate", "[sweep][rounding]") {
  // 64 sweeps each adding 2^-10 (1/8 of bfloat16's ulp at 1) to every element: round-to-nearest
  // never moves θ; stochastic rounding moves it by 64·2^-10 = 1/16 on average.
  const int64_t n = 1 << 15;
  for (bool stochastic : {false, true}) {
    ParamTable table;
    table.entries.push_back({at::ones({n}, at::kBFloat16), 0, 0});
    for (int sweep = 0; sweep < 64; ++sweep) {
      SweepPlan plan;
      plan.distribution = Distribution::Rademacher;
      plan.stochastic_rounding = stochastic;
      plan.rounding_key = splitmix64(static_cast<uint64_t>(sweep));
      plan.num_terms = 0;
      plan.groups[0].keep = 1.0 + std::ldexp(1.0, -10);  // θ ← θ·(1 + 2^-10): the update rides on keep
      apply_sweep(table, plan);
    }
    const double mean = table.entries[0].tensor.to(at::kDouble).mean().item<double>();
    INFO("stochastic " << stochastic << " mean " << mean);
    if (stochastic) {
      // Exact expectation: (1 + 2^-10)^64 applied with unbiased rounding each time (θ grows
      // slightly, so the product is within 1e-3 of 1 + 1/16); the mean of n elements has standard
      // error below ulp/√n.
      CHECK(mean == Approx(std::pow(1.0 + std::ldexp(1.0, -10), 64)).margin(1e-3));
    } else {
      CHECK(mean == 1.0);
    }
  }
}

TEST_CASE("Stochastic rounding is deterministic in its key and changes with it", "[sweep][rounding]") {
  auto run = [](uint64_t rounding_key, int threads) {
    CpuSettingsGuard guard;
    at::set_num_threads(threads);
    ParamTable table;
    table.entries.push_back({at::full({10000}, 0.3, at::kBFloat16), 1, 0});
    SweepPlan plan;
    plan.distribution = Distribution::Gaussian;
    plan.stochastic_rounding = true;
    plan.rounding_key = rounding_key;
    plan.add_term({7, 0, 1e-3, 0, 0, 0});
    apply_sweep(table, plan);
    return table.entries[0].tensor;
  };
  CHECK(bitwise_same(run(1, 1), run(1, 2)));
  CHECK(!bitwise_same(run(1, 2), run(2, 2)));
}

TEST_CASE("narrow_stochastic takes the far neighbour with probability equal to the distance", "[rounding]") {
  // bfloat16: x a quarter of the way from a to b (low half 0x4000) moves to b for the draws that
  // carry, 0xC000 and up: a quarter of them. Exact values and non-finite values never move.
  const float a = 1.0f, b = 1.0078125f;  // consecutive bfloat16 values
  const float x = a + 0.25f * (b - a);
  CHECK(BFloat16Storage::widen(narrow_stochastic<BFloat16Storage>(x, 0x0000u)) == a);
  CHECK(BFloat16Storage::widen(narrow_stochastic<BFloat16Storage>(x, 0xBFFFu)) == a);
  CHECK(BFloat16Storage::widen(narrow_stochastic<BFloat16Storage>(x, 0xC000u)) == b);
  CHECK(BFloat16Storage::widen(narrow_stochastic<BFloat16Storage>(x, 0xFFFFu)) == b);
  CHECK(BFloat16Storage::widen(narrow_stochastic<BFloat16Storage>(-x, 0xC000u)) == -b);
  CHECK(BFloat16Storage::widen(narrow_stochastic<BFloat16Storage>(a, 0xFFFFu)) == a);
  // float16, normal: the top 13 bits of the draw carry into the 13 bits float16 drops.
  const float c = 1.0f, d = 1.0009765625f;  // consecutive float16 values
  const float between = c + 0.75f * (d - c);
  CHECK(Float16Storage::widen(narrow_stochastic<Float16Storage>(between, 0x3FFFu)) == c);
  CHECK(Float16Storage::widen(narrow_stochastic<Float16Storage>(between, 0x4000u)) == d);
  CHECK(Float16Storage::widen(narrow_stochastic<Float16Storage>(-between, 0x4000u)) == -d);
  // float16, subnormal: a quarter of the smallest subnormal reaches it for a quarter of the draws.
  const float tiny = std::ldexp(1.0f, -26);
  CHECK(Float16Storage::widen(narrow_stochastic<Float16Storage>(tiny, 0xBFFFu)) == 0.0f);
  CHECK(Float16Storage::widen(narrow_stochastic<Float16Storage>(tiny, 0xC000u)) == std::ldexp(1.0f, -24));
  CHECK(Float16Storage::widen(narrow_stochastic<Float16Storage>(-tiny, 0xFFFFu)) == -std::ldexp(1.0f, -24));
  // Beyond the largest finite float16 (65504; the next pattern would be 65536): inf by the distance.
  CHECK(narrow_stochastic<Float16Storage>(65520.0f, 0x7FFFu) == 0x7BFFu);
  CHECK(narrow_stochastic<Float16Storage>(65520.0f, 0x8000u) == 0x7C00u);
  CHECK(narrow_stochastic<Float16Storage>(1e30f, 0x0000u) == 0x7C00u);
  const float inf = std::numeric_limits<float>::infinity();
  for (const uint32_t draw : {0x0000u, 0x8000u, 0xFFFFu}) {
    CHECK(narrow_stochastic<BFloat16Storage>(inf, draw) == 0x7F80u);
    CHECK(narrow_stochastic<BFloat16Storage>(-inf, draw) == 0xFF80u);
    CHECK(narrow_stochastic<Float16Storage>(inf, draw) == 0x7C00u);
    CHECK(std::isnan(BFloat16Storage::widen(narrow_stochastic<BFloat16Storage>(std::nanf(""), draw))));
    CHECK(std::isnan(Float16Storage::widen(narrow_stochastic<Float16Storage>(std::nanf(""), draw))));
  }
  // A signalling NaN whose payload sits in the dropped half stays NaN (the carry must not make it inf).
  const float signalling = bit_cast<float>(0x7F800001u);
  CHECK(std::isnan(BFloat16Storage::widen(narrow_stochastic<BFloat16Storage>(signalling, 0xFFFFu))));
}

TEST_CASE("narrow_stochastic is exactly unbiased over all 2^16 draws", "[rounding]") {
  // The mean over every draw is x itself, computed exactly in double, for bfloat16 at every
  // float32 in a sample across the range (normals, subnormals, halfway points, both signs) and for
  // float16 at each of them from 2^-17 (where its subnormal rule is exact) to its largest finite
  // value. Exactly: not within a tolerance.
  std::mt19937 rng(11);
  std::vector<float> xs = {1.0f + std::ldexp(1.0f, -9), -3.0f - std::ldexp(1.0f, -12), std::ldexp(1.0f, -130),
                           -std::ldexp(3.0f, -140), 1.00390625f /* bfloat16 halfway */, 65504.0f - 1.0f,
                           std::ldexp(1.0f, -14) - std::ldexp(1.0f, -37) /* below float16's smallest normal */,
                           -std::ldexp(1001.0f, -30), std::ldexp(5.0f, -17) /* float16 subnormals */};
  for (int i = 0; i < 60; ++i) {
    const float f = std::ldexp(static_cast<float>(rng()) / 4294967296.0f + 0.5f, static_cast<int>(rng() % 40) - 20);
    xs.push_back(rng() % 2 ? f : -f);
  }
  for (const float x : xs) {
    double bf16_sum = 0, fp16_sum = 0;
    for (uint32_t draw = 0; draw < 65536u; ++draw) {
      bf16_sum += BFloat16Storage::widen(narrow_stochastic<BFloat16Storage>(x, draw));
      fp16_sum += Float16Storage::widen(narrow_stochastic<Float16Storage>(x, draw));
    }
    CHECK(bf16_sum / 65536.0 == static_cast<double>(x));
    if (std::fabs(x) >= std::ldexp(1.0f, -17) && std::fabs(x) <= 65504.0f) CHECK(fp16_sum / 65536.0 == static_cast<double>(x));
  }
}

TEST_CASE("check_sweepable names the parameter and the fix", "[sweep][errors]") {
  CHECK_THROWS_WITH(check_sweepable(at::zeros({4}, at::kInt), "zotorch::MeZO", 3),
                    Catch::Contains("zotorch::MeZO") && Catch::Contains("parameter 3") && Catch::Contains("Int") &&
                        Catch::Contains("float32, float64, float16 and bfloat16"));
  CHECK_THROWS_WITH(check_sweepable(at::zeros({4, 6}).t(), "zotorch::FZOO", 1),
                    Catch::Contains("parameter 1") && Catch::Contains("not contiguous") &&
                        Catch::Contains("[6, 4]"));
  const at::Tensor sparse = at::zeros({4, 4}).to_sparse();
  CHECK_THROWS_WITH(check_sweepable(sparse, "zotorch::AdaMeZO", 0),
                    Catch::Contains("parameter 0") && Catch::Contains("Sparse") && Catch::Contains("dense"));
  CHECK_THROWS_WITH(check_sweepable(at::Tensor(), "zotorch::MeZO", 2), Catch::Contains("parameter 2") &&
                                                                           Catch::Contains("undefined"));
  CHECK_NOTHROW(check_sweepable(at::zeros({4}, at::kBFloat16), "zotorch::MeZO", 0));
}
