// CPU backend of the fused sweep: at::parallel_for over 128-element chunks of the whole parameter
// list, one read and one write of each element, directions regenerated in vectorised batches
// (portable, AVX2 and AVX-512 builds chosen at run time). No chunking or build changes a bit.
#pragma once

#include <zotorch/detail/sweep.h>

#include <ATen/Config.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define ZOTORCH_CPU_SSE2 1
#endif

// Runtime dispatch to an AVX2 build of the same loops (GCC/Clang on x86-64 only; nvcc's host pass
// and other compilers get the portable build). AVX2 without FMA: unless the user's flags enable
// FMA, no instruction that could fuse a multiply and an add exists in that build.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__) && \
    !defined(ZOTORCH_NO_CPU_DISPATCH)
#define ZOTORCH_CPU_AVX2_DISPATCH 1
#include <cpuid.h>
#include <immintrin.h>
#endif

// An AVX-512 build of the float loops too, with GCC only: AVX-512F has FMA instructions, and
// GCC's optimize("fp-contract=off") (ZOTORCH_CPU_NO_CONTRACT below) is what keeps it from fusing
// a multiply and an add there. Clang offers no such per-function switch (and contracts only
// within one expression unless told -ffp-contract=fast); it gets AVX2 loops, AVX-512F Philox.
#if defined(ZOTORCH_CPU_AVX2_DISPATCH) && !defined(ZOTORCH_NO_AVX512) && defined(__GNUC__) && !defined(__clang__)
#define ZOTORCH_CPU_AVX512_SWEEP 1
#endif

#if defined(__GNUC__) || defined(__clang__)
#define ZOTORCH_CPU_INLINE __attribute__((always_inline)) inline
#else
#define ZOTORCH_CPU_INLINE inline
#endif

// An unroll hint for GCC; nvcc's host pass (which compiles this header for the CUDA kernels' file)
// and Clang do not know the GCC spelling.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define ZOTORCH_CPU_UNROLL_4 _Pragma("GCC unroll 4")
#else
#define ZOTORCH_CPU_UNROLL_4
#endif

// GCC contracts a·b + c into an fma whenever the target has FMA and the language mode is GNU (the
// CMake default), e.g. under -march=native. The sweep's entry points switch that off for
// themselves and everything inlined into them, so its bits never depend on the user's flags.
#if defined(__GNUC__) && !defined(__clang__)
#define ZOTORCH_CPU_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define ZOTORCH_CPU_NO_CONTRACT
#endif

namespace zotorch {
namespace detail {

/// Whether at::parallel_for can use more than one thread in this translation unit. With LibTorch's
/// OpenMP backend the parallel region is compiled here, so it needs -fopenmp; the CMake targets add
/// it (docs/performance.md "Threads"). Without it every CPU sweep runs on the calling thread.
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
constexpr bool kCpuSweepParallel = false;
#else
constexpr bool kCpuSweepParallel = true;
#endif

/// Elements per work item: one Rademacher block, 32 Gaussian blocks.
constexpr int64_t kCpuChunk = 128;
/// Chunks per parallel_for grain: small tensors stay on the calling thread.
constexpr int64_t kCpuGrainChunks = 32;
/// Chunks swept together: their Rademacher blocks come from one 8-lane Philox evaluation.
constexpr int kCpuSpan = 8;
/// Chunks swept together by a linear Rademacher sweep: the words of 32 chunks in one Philox
/// evaluation of 32 lanes keep several independent Philox chains in flight, where 8 lanes left the
/// pass over θ waiting on one chain's latency (docs/performance.md "Rademacher sweeps at the memory
/// limit"). Its s and r are 16 KiB each in float32 (32 KiB in float64).
constexpr int kCpuRademacherSpan = 32;

/// A param group's scalars resolved into the arithmetic type for one sweep.
template <class A>
struct ResolvedGroup {
  A keep;
  A adaptive_step;  ///< lr·scale
  A adaptive_stab;
  bool staged;  ///< staged_plan: the restore terms are summed into r and rounded first
  A coefficient[kMaxTerms];  ///< keep·alpha_k + lr·beta_k
  A restore[kMaxTerms];      ///< restore_k when staged, else 0
  A m_weight[kMaxTerms];
  A v_weight[kMaxTerms];
};

/// keep·alpha_k + lr·beta_k of `group`, in double, rounded once to A (the SPEC in sweep.h: decay
/// applies to θ with its restore offsets removed, so a fused restore + decayed update decays the
/// unperturbed θ; tests/test_mezo.cpp checks this bit for bit). In a plan of restore terms alone
/// (not staged_plan: keep = 1, alpha = beta = 0) restore_k is the coefficient, exactly as in a
/// restore sweep that spells it as alpha. The CUDA kernels resolve their coefficients with this
/// same function; mul/add keep nvcc from contracting it into an fma.
template <class A>
ZOTORCH_HD_INLINE A resolve_coefficient(const SweepPlan& plan, int group, int k, bool staged) {
  const GroupScalars& g = plan.groups[group];
  const SweepTerm& t = plan.terms[k];
  const double coefficient = add(mul(g.keep, t.alpha), mul(g.lr, t.beta));
  return static_cast<A>(staged || t.restore == 0 ? coefficient : add(coefficient, t.restore));
}

/// restore_k rounded once to A when the plan is staged, else 0 (the restore is in the coefficient).
template <class A>
ZOTORCH_HD_INLINE A resolve_restore(const SweepPlan& plan, int k, bool staged) {
  return staged ? static_cast<A>(plan.terms[k].restore) : A(0);
}

template <class A>
ZOTORCH_CPU_INLINE ResolvedGroup<A> resolve_group(const SweepPlan& plan, int group) {
  const GroupScalars& g = plan.groups[group];
  ResolvedGroup<A> out;
  out.keep = static_cast<A>(g.keep);
  out.adaptive_step = static_cast<A>(g.lr * plan.adaptive_scale);
  out.adaptive_stab = static_cast<A>(plan.adaptive_stab);
  out.staged = staged_plan(plan);
  for (int k = 0; k < plan.num_terms; ++k) {
    out.coefficient[k] = resolve_coefficient<A>(plan, group, k, out.staged);
    out.restore[k] = resolve_restore<A>(plan, k, out.staged);
    out.m_weight[k] = static_cast<A>(plan.terms[k].m_weight);
    out.v_weight[k] = static_cast<A>(plan.terms[k].v_weight);
  }
  return out;
}

/// Which CPU kernels sweeps may use: Best (the default) picks the widest the CPU runs; tests and
/// benchmarks pin the others to compare them. All of them compute the same bits.
enum class CpuKernels : uint8_t {
  Best,      ///< AVX-512 where the CPU has it (loops: GCC builds only; Philox: GCC and Clang), else AVX2;
             ///< with AVX512-BF16's conversion where the CPU has it
  Avx2,      ///< AVX2 loops and Philox, no AVX-512
  Portable,  ///< the loops as the user's compiler flags build them
  Avx512,    ///< Best without the optional AVX512-BF16 conversion
};
inline CpuKernels& cpu_kernels() {
  static CpuKernels kernels = CpuKernels::Best;
  return kernels;
}

// The kernels below differ between builds with and without runtime dispatch (nvcc's host pass,
// other compilers, ZOTORCH_NO_CPU_DISPATCH / ZOTORCH_NO_AVX512): distinct inline namespaces keep
// the linker from merging different definitions when such translation units share a program.
#if defined(ZOTORCH_CPU_AVX512_SWEEP)
#define ZOTORCH_CPU_KERNELS_ABI cpu_dispatch_avx512
#elif defined(ZOTORCH_CPU_AVX2_DISPATCH) && !defined(ZOTORCH_NO_AVX512)
#define ZOTORCH_CPU_KERNELS_ABI cpu_dispatch_avx2
#elif defined(ZOTORCH_CPU_AVX2_DISPATCH)
#define ZOTORCH_CPU_KERNELS_ABI cpu_dispatch_avx2_only
#else
#define ZOTORCH_CPU_KERNELS_ABI cpu_portable
#endif
inline namespace ZOTORCH_CPU_KERNELS_ABI {

// ---------------------------------------------------------------------------------------------
// Vectorisable building blocks. Each is a structure-of-arrays rewrite of an element function of
// philox.h / sweep.h with the same operations in the same order, so it returns the same bits;
// tests/test_sweep_cpu.cpp holds them side by side.

/// Philox4x32-10 of N consecutive blocks first_block, first_block + 1, ... of one stream, one block
/// per lane: out[w][lane] is word w of block first_block + lane (philox4x32_10 lane by lane).
template <int N>
ZOTORCH_CPU_INLINE void philox_lanes(uint64_t key, uint32_t tensor_id, uint32_t probe, uint64_t first_block,
                                     uint32_t (*out)[N]) {
  // The counter words evolve in `out` itself: no copy at the end.
  uint32_t* c0 = out[0];
  uint32_t* c1 = out[1];
  uint32_t* c2 = out[2];
  uint32_t* c3 = out[3];
  for (int i = 0; i < N; ++i) {
    const uint64_t block = first_block + static_cast<uint64_t>(i);
    c0[i] = static_cast<uint32_t>(block);
    c1[i] = static_cast<uint32_t>(block >> 32);
    c2[i] = tensor_id;
    c3[i] = probe;
  }
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    for (int i = 0; i < N; ++i) {
      const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0[i];
      const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2[i];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[i] ^ k0, n1 = static_cast<uint32_t>(p1);
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[i] ^ k1, n3 = static_cast<uint32_t>(p0);
      c0[i] = n0;
      c1[i] = n1;
      c2[i] = n2;
      c3[i] = n3;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

#if defined(ZOTORCH_CPU_AVX2_DISPATCH)
/// philox_lanes with AVX2 intrinsics: the auto-vectorised loop spends most of its time shuffling
/// 64-bit products; here each 32×32→64 multiply is two vpmuludq (even and odd lanes) and two
/// blends. Four independent groups of 8 lanes are in flight to hide the multiply latency.
/// Not always_inline: GCC refuses to inline a target("avx2") function into a template that is not
/// itself compiled for AVX2; it is only called from code built for AVX2.
template <int N>
__attribute__((target("avx2"))) inline void philox_lanes_avx2(uint64_t key, uint32_t tensor_id, uint32_t probe,
                                                              uint64_t first_block, uint32_t (*out)[N]) {
  static_assert(N % 8 == 0, "whole groups of 8 lanes");
  constexpr int kGroups = N >= 32 ? 4 : N >= 16 ? 2 : 1;
  alignas(32) uint32_t lo[N], hi[N];
  for (int i = 0; i < N; ++i) {
    const uint64_t block = first_block + static_cast<uint64_t>(i);
    lo[i] = static_cast<uint32_t>(block);
    hi[i] = static_cast<uint32_t>(block >> 32);
  }
  const __m256i mul0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i mul1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int g0 = 0; g0 < N; g0 += 8 * kGroups) {
    __m256i c0[kGroups], c1[kGroups], c2[kGroups], c3[kGroups];
#pragma GCC unroll 4
    for (int g = 0; g < kGroups; ++g) {
      c0[g] = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo + g0 + 8 * g));
      c1[g] = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi + g0 + 8 * g));
      c2[g] = _mm256_set1_epi32(static_cast<int>(tensor_id));
      c3[g] = _mm256_set1_epi32(static_cast<int>(probe));
    }
    uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
    for (int round = 0; round < 10; ++round) {
      const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0)), key1 = _mm256_set1_epi32(static_cast<int>(k1));
#pragma GCC unroll 4
      for (int g = 0; g < kGroups; ++g) {
        // p0 = mul0·c0, p1 = mul1·c2, as (hi, lo) word pairs per lane.
        const __m256i p0_even = _mm256_mul_epu32(c0[g], mul0);
        const __m256i p0_odd = _mm256_mul_epu32(_mm256_srli_epi64(c0[g], 32), mul0);
        const __m256i p1_even = _mm256_mul_epu32(c2[g], mul1);
        const __m256i p1_odd = _mm256_mul_epu32(_mm256_srli_epi64(c2[g], 32), mul1);
        const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(p0_even, 32), p0_odd, 0xAA);
        const __m256i lo0 = _mm256_blend_epi32(p0_even, _mm256_slli_epi64(p0_odd, 32), 0xAA);
        const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(p1_even, 32), p1_odd, 0xAA);
        const __m256i lo1 = _mm256_blend_epi32(p1_even, _mm256_slli_epi64(p1_odd, 32), 0xAA);
        c0[g] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[g]), key0);
        c1[g] = lo1;
        c2[g] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[g]), key1);
        c3[g] = lo0;
      }
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
#pragma GCC unroll 4
    for (int g = 0; g < kGroups; ++g) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[0][g0 + 8 * g]), c0[g]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[1][g0 + 8 * g]), c1[g]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[2][g0 + 8 * g]), c2[g]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[3][g0 + 8 * g]), c3[g]);
    }
  }
}

#if !defined(ZOTORCH_NO_AVX512)
// GCC 12's own avx512fintrin.h trips -Wuninitialized (GCC bug 105593) once its intrinsics inline.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
/// Ten Philox4x32 rounds on kGroups × 8 blocks with AVX-512F, blocks first_block + 8g + j in the
/// 64-bit lanes j of c0[g] .. c3[g]. Each 32-bit word sits in the low half of its 64-bit lane: one
/// vpmuludq then gives a whole product (the low word in place, the high word one shift away),
/// with no even/odd split and blend. The high halves carry junk that no multiply reads (vpmuludq
/// takes the low 32 bits of each lane); callers keep the low halves. Integer instructions only, so
/// it needs no protection from contraction and serves Clang's AVX2 build as well as GCC's AVX-512 one.
template <int kGroups>
__attribute__((target("avx512f"))) ZOTORCH_CPU_INLINE void philox_rounds_avx512(uint64_t key, uint32_t tensor_id,
                                                                               uint32_t probe, uint64_t first_block,
                                                                               __m512i (&c0)[kGroups], __m512i (&c1)[kGroups],
                                                                               __m512i (&c2)[kGroups], __m512i (&c3)[kGroups]) {
  const __m512i mul0 = _mm512_set1_epi64(0xD2511F53u);
  const __m512i mul1 = _mm512_set1_epi64(0xCD9E8D57u);
  const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
#pragma GCC unroll 4
  for (int g = 0; g < kGroups; ++g) {
    // The 64-bit block number: its low word in place, its high word shifted down.
    const __m512i block = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(first_block + 8 * g)), lane);
    c0[g] = block;
    c1[g] = _mm512_srli_epi64(block, 32);
    c2[g] = _mm512_set1_epi32(static_cast<int>(tensor_id));
    c3[g] = _mm512_set1_epi32(static_cast<int>(probe));
  }
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m512i key0 = _mm512_set1_epi32(static_cast<int>(k0)), key1 = _mm512_set1_epi32(static_cast<int>(k1));
#pragma GCC unroll 4
    for (int g = 0; g < kGroups; ++g) {
      const __m512i product0 = _mm512_mul_epu32(c0[g], mul0);
      const __m512i product1 = _mm512_mul_epu32(c2[g], mul1);
      c0[g] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(product1, 32), c1[g], key0, 0x96);  // a ^ b ^ c
      c1[g] = product1;
      c2[g] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(product0, 32), c3[g], key1, 0x96);
      c3[g] = product0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

/// philox_lanes with AVX-512F (philox_rounds_avx512): groups of 8 blocks, four at a time (two when N
/// is 16).
template <int N>
__attribute__((target("avx512f"))) inline void philox_lanes_avx512(uint64_t key, uint32_t tensor_id, uint32_t probe,
                                                                  uint64_t first_block, uint32_t (*out)[N]) {
  static_assert(N == 16 || N % 32 == 0, "2 or 4 groups of 8 blocks at a time");
  constexpr int kGroups = N == 16 ? 2 : 4;
  for (int g0 = 0; g0 < N; g0 += 8 * kGroups) {
    __m512i c0[kGroups], c1[kGroups], c2[kGroups], c3[kGroups];
    philox_rounds_avx512<kGroups>(key, tensor_id, probe, first_block + static_cast<uint64_t>(g0), c0, c1, c2, c3);
#pragma GCC unroll 4
    for (int g = 0; g < kGroups; ++g) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[0][g0 + 8 * g]), _mm512_cvtepi64_epi32(c0[g]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[1][g0 + 8 * g]), _mm512_cvtepi64_epi32(c1[g]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[2][g0 + 8 * g]), _mm512_cvtepi64_epi32(c2[g]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[3][g0 + 8 * g]), _mm512_cvtepi64_epi32(c3[g]));
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

inline bool cpu_use_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has && (cpu_kernels() == CpuKernels::Best || cpu_kernels() == CpuKernels::Avx512);
}
#endif
#endif

/// The Philox of the build a sweep runs in: AVX-512F or AVX2 intrinsics in the AVX2 build, else
/// the auto-vectorised loop. All return philox4x32_10's words.
template <bool Avx2, int N>
ZOTORCH_CPU_INLINE void philox_batch(uint64_t key, uint32_t tensor_id, uint32_t probe, uint64_t first_block,
                                     uint32_t (*out)[N]) {
#if defined(ZOTORCH_CPU_AVX2_DISPATCH)
  if constexpr (Avx2) {
#if !defined(ZOTORCH_NO_AVX512)
    if constexpr (N % 16 == 0) {
      if (cpu_use_avx512()) {
        philox_lanes_avx512<N>(key, tensor_id, probe, first_block, out);
        return;
      }
    }
#endif
    philox_lanes_avx2<N>(key, tensor_id, probe, first_block, out);
    return;
  }
#endif
  philox_lanes<N>(key, tensor_id, probe, first_block, out);
}

/// Bit b of a word, for the sign masks: a table load instead of a per-lane variable shift, which
/// SSE2 does not have.
struct BitTable {
  alignas(64) static constexpr uint32_t bit[32] = {
      1u << 0,  1u << 1,  1u << 2,  1u << 3,  1u << 4,  1u << 5,  1u << 6,  1u << 7,  1u << 8,  1u << 9,  1u << 10,
      1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15, 1u << 16, 1u << 17, 1u << 18, 1u << 19, 1u << 20, 1u << 21,
      1u << 22, 1u << 23, 1u << 24, 1u << 25, 1u << 26, 1u << 27, 1u << 28, 1u << 29, 1u << 30, 1u << 31};
};

/// rademacher_sign_mask for the 32 elements of one word.
ZOTORCH_CPU_INLINE uint32_t sign_mask_of_bit(uint32_t word, int b) {
  return (word & BitTable::bit[b]) != 0u ? 0x80000000u : 0u;
}

/// out[i] = sqrt(in[i]) for n a multiple of 4: correctly rounded, as sqrtf / sqrt. A loop over sqrtf
/// does not vectorise while sqrtf may set errno.
ZOTORCH_CPU_INLINE void sqrt_lanes(const float* in, float* out, int n) {
#if defined(ZOTORCH_CPU_SSE2)
  for (int i = 0; i < n; i += 4) _mm_storeu_ps(out + i, _mm_sqrt_ps(_mm_loadu_ps(in + i)));
#else
  for (int i = 0; i < n; ++i) out[i] = std::sqrt(in[i]);
#endif
}
ZOTORCH_CPU_INLINE void sqrt_lanes(const double* in, double* out, int n) {
#if defined(ZOTORCH_CPU_SSE2)
  for (int i = 0; i < n; i += 2) _mm_storeu_pd(out + i, _mm_sqrt_pd(_mm_loadu_pd(in + i)));
#else
  for (int i = 0; i < n; ++i) out[i] = std::sqrt(in[i]);
#endif
}

#if defined(ZOTORCH_CPU_AVX2_DISPATCH)
/// open_uniform, log_unit and sincos_turns of philox.h on W lanes at once, written once with the
/// GCC/Clang vector extensions: inlined into a function built for AVX2 (W = 8) or AVX-512 (W = 16),
/// each operator becomes one instruction of that ISA. The same operations in the same order as the
/// scalar functions, so the same bits (tests/test_philox.cpp checks every uniform); no FMA can
/// appear, as the callers compile with contraction off. Vectors go in and out by reference: by
/// value, a vector wider than the ISA the function is compiled for changes the ABI, which GCC warns
/// about. Casts between vector types of one size reinterpret the bits.
template <int W>
struct Lanes;
// One specialisation per width: GCC 12 rejects __builtin_convertvector on a type that depends on a
// template parameter.
#define ZOTORCH_CPU_LANES(width)                                                                          \
  template <>                                                                                             \
  struct Lanes<width> {                                                                                   \
    typedef float F __attribute__((vector_size(4 * (width))));                                            \
    typedef int32_t I __attribute__((vector_size(4 * (width))));                                          \
    typedef uint32_t U __attribute__((vector_size(4 * (width))));                                         \
    /* int32 → float rounds to nearest, float → int32 truncates, as static_cast does */                  \
    static ZOTORCH_CPU_INLINE void convert(const I& in, F& out) { out = __builtin_convertvector(in, F); } \
    static ZOTORCH_CPU_INLINE void convert(const F& in, I& out) { out = __builtin_convertvector(in, I); } \
  };
ZOTORCH_CPU_LANES(8)
ZOTORCH_CPU_LANES(16)
#undef ZOTORCH_CPU_LANES

template <int W>
struct GaussianLanes {
  using L = Lanes<W>;
  using F = typename L::F;
  using I = typename L::I;
  using U = typename L::U;

  static ZOTORCH_CPU_INLINE void open_uniform(const U& word, F& u) {
    L::convert((I)(((word >> 9) << 1) | 1u), u);
    u *= 5.9604644775390625e-8f;  // 2^-24
  }

  static ZOTORCH_CPU_INLINE void log_unit(const F& u, F& log_u) {
    using P = GaussianPoly;
    const U bits = (U)u;
    const U m_bits = (bits & 0x007FFFFFu) | 0x3F800000u;
    const I above = (I)m_bits > 0x3FB504F3;  // -1 where m is halved; both sides positive as int32
    const F m = (F)(m_bits + ((U)above & 0xFF800000u));  // m_bits − 2^23 there: exponent − 1
    const I exponent = ((I)(bits >> 23) & 0xFF) - 127 - above;
    const F f = m - 1.0f;
    const F s = f / (2.0f + f);
    const F s2 = s * s;
    F poly = P::kLog6 + s2 * P::kLog8;
    poly = P::kLog4 + s2 * poly;
    poly = P::kLog2 + s2 * poly;
    const F log_m = (2.0f * s) * (1.0f + s2 * poly);
    F e;
    L::convert(exponent, e);
    log_u = e * P::kLn2Hi + (log_m + e * P::kLn2Lo);
  }

  static ZOTORCH_CPU_INLINE void sincos_turns(const F& t, F& cos_out, F& sin_out) {
    using P = GaussianPoly;
    // t·4 + ½ > 0, so the truncating conversion is the floor that static_cast<int32_t> gives.
    I quarter_turns_i;
    L::convert(t * 4.0f + 0.5f, quarter_turns_i);
    F quarter_turns;
    L::convert(quarter_turns_i, quarter_turns);
    const F r = t - quarter_turns * 0.25f;
    const F r2 = r * r;
    F sp = P::kSin9 + r2 * P::kSin11;
    sp = P::kSin7 + r2 * sp;
    sp = P::kSin5 + r2 * sp;
    sp = P::kSin3 + r2 * sp;
    sp = P::kSin1 + r2 * sp;
    const F sin_r = r * sp;
    F cp = P::kCos10 + r2 * P::kCos12;
    cp = P::kCos8 + r2 * cp;
    cp = P::kCos6 + r2 * cp;
    cp = P::kCos4 + r2 * cp;
    cp = P::kCos2 + r2 * cp;
    const F cos_r = 1.0f + r2 * cp;
    // The quadrant's swap and sign flips, as in sincos_turns.
    const I odd = (quarter_turns_i & 1) != 0;
    const U cos_sign = (U)((quarter_turns_i + 1) & 2) << 30;
    const U sin_sign = (U)(quarter_turns_i & 2) << 30;
    cos_out = (F)((U)(odd ? sin_r : cos_r) ^ cos_sign);
    sin_out = (F)((U)(odd ? cos_r : sin_r) ^ sin_sign);
  }

  /// The Box-Muller pair p of blocks g..g+W−1 of words (radius from word 2p, angle from 2p + 1, as
  /// gaussian4): −2·ln u, which the caller's ISA takes the square root of, and cos, sin.
  template <int N>
  static ZOTORCH_CPU_INLINE void pair(const uint32_t (*words)[N], int p, int g, F& radius_sq, F& cosine, F& sine) {
    U radius_word, angle_word;
    std::memcpy(&radius_word, &words[2 * p][g], sizeof(U));
    std::memcpy(&angle_word, &words[2 * p + 1][g], sizeof(U));
    F radius_u, angle_u, log_u;
    open_uniform(radius_word, radius_u);
    open_uniform(angle_word, angle_u);
    log_unit(radius_u, log_u);
    radius_sq = -2.0f * log_u;
    sincos_turns(angle_u, cosine, sine);
  }
};

/// gaussian_chunk for AVX2: Philox words to normals in registers, then a 4 × 8 transpose into
/// element order. The auto-vectorised loops store and reload every intermediate instead
/// (docs/performance.md "Gaussian directions").
__attribute__((target("avx2"))) ZOTORCH_CPU_NO_CONTRACT inline void gaussian_chunk_avx2(
    uint64_t key, uint32_t tensor_id, uint32_t probe, int64_t chunk, float* z) {
  using G = GaussianLanes<8>;
  constexpr int kBlocks = static_cast<int>(kCpuChunk / kGaussianBlock);
  alignas(64) uint32_t words[4][kBlocks];
  philox_batch<true, kBlocks>(key, tensor_id, probe, static_cast<uint64_t>(chunk) * kBlocks, words);
  for (int g = 0; g < kBlocks; g += 8) {
    __m256 normal[4];  // normal[q] lane b is z[4·(g + b) + q]
    for (int p = 0; p < 2; ++p) {
      G::F radius_sq, cosine, sine;
      G::pair(words, p, g, radius_sq, cosine, sine);
      const __m256 radius = _mm256_sqrt_ps((__m256)radius_sq);
      normal[2 * p] = _mm256_mul_ps(radius, (__m256)cosine);
      normal[2 * p + 1] = _mm256_mul_ps(radius, (__m256)sine);
    }
    const __m256 t0 = _mm256_unpacklo_ps(normal[0], normal[1]);  // b0q0 b0q1 b1q0 b1q1 | b4.. b5..
    const __m256 t1 = _mm256_unpackhi_ps(normal[0], normal[1]);  // b2, b3 | b6, b7
    const __m256 t2 = _mm256_unpacklo_ps(normal[2], normal[3]);
    const __m256 t3 = _mm256_unpackhi_ps(normal[2], normal[3]);
    const __m256 b04 = _mm256_shuffle_ps(t0, t2, 0x44), b15 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 b26 = _mm256_shuffle_ps(t1, t3, 0x44), b37 = _mm256_shuffle_ps(t1, t3, 0xEE);
    float* out = z + 4 * g;
    _mm256_storeu_ps(out, _mm256_permute2f128_ps(b04, b15, 0x20));
    _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(b26, b37, 0x20));
    _mm256_storeu_ps(out + 16, _mm256_permute2f128_ps(b04, b15, 0x31));
    _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(b26, b37, 0x31));
  }
}
#endif

#if defined(ZOTORCH_CPU_AVX512_SWEEP)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC bug 105593, as at philox_lanes_avx512
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
/// gaussian_chunk_avx2 on 16 lanes: the transpose is 4 × 4 within each 128-bit lane, then 4 × 4
/// of the 128-bit lanes themselves.
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) ZOTORCH_CPU_NO_CONTRACT inline void
gaussian_chunk_avx512(uint64_t key, uint32_t tensor_id, uint32_t probe, int64_t chunk, float* z) {
  using G = GaussianLanes<16>;
  constexpr int kBlocks = static_cast<int>(kCpuChunk / kGaussianBlock);
  alignas(64) uint32_t words[4][kBlocks];
  philox_batch<true, kBlocks>(key, tensor_id, probe, static_cast<uint64_t>(chunk) * kBlocks, words);
  for (int g = 0; g < kBlocks; g += 16) {
    __m512 normal[4];  // normal[q] lane b is z[4·(g + b) + q]
    for (int p = 0; p < 2; ++p) {
      G::F radius_sq, cosine, sine;
      G::pair(words, p, g, radius_sq, cosine, sine);
      const __m512 radius = _mm512_sqrt_ps((__m512)radius_sq);
      normal[2 * p] = _mm512_mul_ps(radius, (__m512)cosine);
      normal[2 * p + 1] = _mm512_mul_ps(radius, (__m512)sine);
    }
    // In each 128-bit lane k (blocks 4k..4k+3): block_j holds block 4k + j's four normals.
    const __m512 t0 = _mm512_unpacklo_ps(normal[0], normal[1]), t1 = _mm512_unpackhi_ps(normal[0], normal[1]);
    const __m512 t2 = _mm512_unpacklo_ps(normal[2], normal[3]), t3 = _mm512_unpackhi_ps(normal[2], normal[3]);
    const __m512 block0 = _mm512_shuffle_ps(t0, t2, 0x44), block1 = _mm512_shuffle_ps(t0, t2, 0xEE);
    const __m512 block2 = _mm512_shuffle_ps(t1, t3, 0x44), block3 = _mm512_shuffle_ps(t1, t3, 0xEE);
    // 128-bit lanes: y0 = b0 b8 b1 b9, y1 = b2 b10 b3 b11, y2 = b4 b12 b5 b13, y3 = b6 b14 b7 b15.
    const __m512 y0 = _mm512_shuffle_f32x4(block0, block1, 0x88), y1 = _mm512_shuffle_f32x4(block2, block3, 0x88);
    const __m512 y2 = _mm512_shuffle_f32x4(block0, block1, 0xDD), y3 = _mm512_shuffle_f32x4(block2, block3, 0xDD);
    float* out = z + 4 * g;
    _mm512_storeu_ps(out, _mm512_shuffle_f32x4(y0, y1, 0x88));
    _mm512_storeu_ps(out + 16, _mm512_shuffle_f32x4(y2, y3, 0x88));
    _mm512_storeu_ps(out + 32, _mm512_shuffle_f32x4(y0, y1, 0xDD));
    _mm512_storeu_ps(out + 48, _mm512_shuffle_f32x4(y2, y3, 0xDD));
  }
}
#pragma GCC diagnostic pop
#endif

/// gaussian4 of 32 consecutive blocks: z[0..127] = the Gaussian direction of one chunk. The AVX2
/// and AVX-512 builds compute it in registers (gaussian_chunk_avx2 / _avx512), the portable build
/// in the loops below.
template <bool Avx2, bool Avx512 = false>
ZOTORCH_CPU_INLINE void gaussian_chunk(uint64_t key, uint32_t tensor_id, uint32_t probe, int64_t chunk, float* z) {
#if defined(ZOTORCH_CPU_AVX512_SWEEP)
  if constexpr (Avx512) {
    gaussian_chunk_avx512(key, tensor_id, probe, chunk, z);
    return;
  }
#endif
#if defined(ZOTORCH_CPU_AVX2_DISPATCH)
  if constexpr (Avx2 && !Avx512) {
    gaussian_chunk_avx2(key, tensor_id, probe, chunk, z);
    return;
  }
#endif
  constexpr int kBlocks = static_cast<int>(kCpuChunk / kGaussianBlock);
  alignas(64) uint32_t words[4][kBlocks];
  philox_batch<Avx2, kBlocks>(key, tensor_id, probe, static_cast<uint64_t>(chunk) * kBlocks, words);
  // Pair p of block b takes its radius from word 2p and its angle from word 2p + 1.
  alignas(64) float radius_sq[2][kBlocks], radius[2][kBlocks], cosine[2][kBlocks], sine[2][kBlocks];
  for (int pair = 0; pair < 2; ++pair) {
    for (int b = 0; b < kBlocks; ++b) {
      radius_sq[pair][b] = mul(-2.0f, log_unit(open_uniform(words[2 * pair][b])));
      const SinCos sc = sincos_turns(open_uniform(words[2 * pair + 1][b]));
      cosine[pair][b] = sc.cos;
      sine[pair][b] = sc.sin;
    }
  }
  sqrt_lanes(&radius_sq[0][0], &radius[0][0], 2 * kBlocks);
  for (int b = 0; b < kBlocks; ++b) {
    z[4 * b + 0] = mul(radius[0][b], cosine[0][b]);
    z[4 * b + 1] = mul(radius[0][b], sine[0][b]);
    z[4 * b + 2] = mul(radius[1][b], cosine[1][b]);
    z[4 * b + 3] = mul(radius[1][b], sine[1][b]);
  }
}

/// The stochastic-rounding draws of one chunk in element order: element i takes rounding_bits16 of
/// block i / 8 (docs/numerics.md "The noise stream").
template <bool Avx2>
ZOTORCH_CPU_INLINE void rounding_chunk(uint64_t key, uint32_t tensor_id, int64_t chunk, uint32_t* bits16) {
  constexpr int kBlocks = static_cast<int>(kCpuChunk / kRoundingBlock);
  alignas(64) uint32_t words[4][kBlocks];
  philox_batch<Avx2, kBlocks>(key, tensor_id, kRoundingProbe, static_cast<uint64_t>(chunk) * kBlocks, words);
  for (int b = 0; b < kBlocks; ++b) {
    const uint32_t block[4] = {words[0][b], words[1][b], words[2][b], words[3][b]};
    for (int i = 0; i < static_cast<int>(kRoundingBlock); ++i) bits16[kRoundingBlock * b + i] = rounding_bits16(block, i);
  }
}

/// Bytes ahead of the element being swept that the pass over θ asks the cache for: the hardware
/// prefetcher alone leaves a one-pass read-modify-write below the core's bandwidth
/// (docs/performance.md "16-bit sweeps").
constexpr int64_t kCpuPrefetchBytes = 4096;

/// Prefetches chunk-sized memory kCpuPrefetchBytes beyond `chunk`; past a tensor's end it is a no-op.
template <class S>
ZOTORCH_CPU_INLINE void prefetch_chunk_ahead(const S* chunk) {
#if defined(__GNUC__) || defined(__clang__)
  const char* ahead = reinterpret_cast<const char*>(chunk) + kCpuPrefetchBytes;
  for (int64_t line = 0; line < kCpuChunk * static_cast<int64_t>(sizeof(S)); line += 64) {
    __builtin_prefetch(ahead + line, 1, 3);
  }
#else
  (void)chunk;
#endif
}

#if defined(ZOTORCH_CPU_AVX2_DISPATCH)
// ---------------------------------------------------------------------------------------------
// The 16-bit pass over θ for CPUs with AVX2 but no AVX-512 (docs/performance.md "16-bit sweeps on
// AVX2"): the loop GCC auto-vectorises for AVX2 converts between uint16 storage and float lanes
// one element at a time. Here 8 elements take one 128-bit load, float16 converts with F16C
// (every AVX2 CPU has it; it is checked at run time all the same), and the widen / round to nearest
// / stochastic rounding of sweep.h are spelled in vector operations in the same order, as
// finish16_avx512 spells them on 16 lanes, so every bit equals the portable build's
// (tests/test_sweep_cpu.cpp compares them).
#define ZOTORCH_CPU_AVX2_F16C_TARGET __attribute__((target("avx2,f16c")))

/// Whether the CPU converts between float16 and float32 in hardware (F16C) and the kernels in use
/// allow AVX2; the 16-bit passes below need it.
inline bool cpu_use_avx2_f16c() {
  // F16C from CPUID leaf 1 (ECX bit 29): Clang's __builtin_cpu_supports does not know "f16c".
  static const bool has = [] {
    unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __builtin_cpu_supports("avx2") && __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & (1u << 29)) != 0;
  }();
  return has && cpu_kernels() != CpuKernels::Portable;
}

ZOTORCH_CPU_AVX2_F16C_TARGET ZOTORCH_CPU_INLINE __m256i splat_avx2(uint32_t value) {
  return _mm256_set1_epi32(static_cast<int>(value));
}

/// All-ones in the lanes whose float32 pattern is a NaN.
ZOTORCH_CPU_AVX2_F16C_TARGET ZOTORCH_CPU_INLINE __m256i nan_lanes_avx2(__m256i bits) {
  return _mm256_cmpgt_epi32(_mm256_and_si256(bits, splat_avx2(0x7FFFFFFFu)), splat_avx2(0x7F800000u));
}

/// 8 lanes of 16-bit patterns (each at most 0xFFFF) packed into 8 consecutive uint16.
ZOTORCH_CPU_AVX2_F16C_TARGET ZOTORCH_CPU_INLINE __m128i pack16_avx2(__m256i patterns) {
  return _mm_packus_epi32(_mm256_castsi256_si128(patterns), _mm256_extracti128_si256(patterns, 1));
}

/// Storage::widen of 8 lanes of 16-bit patterns. float16 converts in hardware, exact for every
/// number; inf and NaN lanes are rebuilt as Float16Storage::widen spells them (the hardware would
/// quieten a signalling NaN).
template <class Storage>
ZOTORCH_CPU_AVX2_F16C_TARGET ZOTORCH_CPU_INLINE __m256 widen16_avx2(__m256i h) {
  if constexpr (std::is_same_v<Storage, BFloat16Storage>) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
  } else {
    const __m256 converted = _mm256_cvtph_ps(pack16_avx2(h));
    const __m256i special = _mm256_cmpeq_epi32(_mm256_and_si256(h, splat_avx2(0x7C00u)), splat_avx2(0x7C00u));
    const __m256i rebuilt = _mm256_or_si256(
        _mm256_slli_epi32(_mm256_and_si256(h, splat_avx2(0x8000u)), 16),
        _mm256_or_si256(splat_avx2(0x7F800000u), _mm256_slli_epi32(_mm256_and_si256(h, splat_avx2(0x3FFu)), 13)));
    return _mm256_blendv_ps(converted, _mm256_castsi256_ps(rebuilt), _mm256_castsi256_ps(special));
  }
}

/// Storage::narrow (round to nearest even) of 8 lanes, the 16-bit patterns in 32-bit lanes. float16
/// converts in hardware (the same numbers as Float16Storage::narrow); NaN lanes become the quiet NaN
/// narrow returns.
template <class Storage>
ZOTORCH_CPU_AVX2_F16C_TARGET ZOTORCH_CPU_INLINE __m256i narrow16_avx2(__m256 x) {
  const __m256i bits = _mm256_castps_si256(x);
  const __m256i nan = nan_lanes_avx2(bits);
  if constexpr (std::is_same_v<Storage, BFloat16Storage>) {
    const __m256i high = _mm256_srli_epi32(bits, 16);
    const __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(bits, splat_avx2(0x7FFFu)), _mm256_and_si256(high, splat_avx2(1u))), 16);
    return _mm256_blendv_epi8(rounded, _mm256_or_si256(high, splat_avx2(0x0040u)), nan);
  } else {
    const __m256i converted =
        _mm256_cvtepu16_epi32(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i quiet_nan =
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(bits, 16), splat_avx2(0x8000u)), splat_avx2(0x7E00u));
    return _mm256_blendv_epi8(converted, quiet_nan, nan);
  }
}

/// narrow_stochastic<Storage> of 8 lanes, operation for operation; `draws` holds each lane's 16
/// random bits.
template <class Storage>
ZOTORCH_CPU_AVX2_F16C_TARGET ZOTORCH_CPU_INLINE __m256i narrow16_stochastic_avx2(__m256 x, __m256i draws) {
  const __m256i bits = _mm256_castps_si256(x);
  if constexpr (std::is_same_v<Storage, BFloat16Storage>) {
    // The draw added below the kept half, the sum cut off; NaN lanes as narrow16_avx2 rounds them.
    const __m256i carried = _mm256_srli_epi32(_mm256_add_epi32(bits, draws), 16);
    return _mm256_blendv_epi8(carried, _mm256_or_si256(_mm256_srli_epi32(bits, 16), splat_avx2(0x0040u)),
                              nan_lanes_avx2(bits));
  } else {
    // float16: the normal and the subnormal carry, selected by magnitude (a non-negative int32, so
    // the signed comparisons order it); non-finite lanes as narrow16_avx2 rounds them.
    const __m256i magnitude = _mm256_and_si256(bits, splat_avx2(0x7FFFFFFFu));
    const __m256i finite = _mm256_cmpgt_epi32(splat_avx2(0x7F800000u), magnitude);
    const __m256i normal_range = _mm256_cmpgt_epi32(magnitude, splat_avx2(0x387FFFFFu));
    const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(bits, 16), splat_avx2(0x8000u));
    const __m256i normal_pattern =
        _mm256_sub_epi32(_mm256_srli_epi32(_mm256_add_epi32(magnitude, _mm256_srli_epi32(draws, 3)), 13),
                         splat_avx2((127u - 15u) << 10));
    const __m256i normal = _mm256_min_epu32(normal_pattern, splat_avx2(0x7C00u));
    // Every lane finite and in float16's normal range, as nearly all weights are: the normal carry.
    if (_mm256_movemask_epi8(_mm256_and_si256(finite, normal_range)) == -1) return _mm256_or_si256(sign, normal);
    const __m256i small = _mm256_min_epu32(magnitude, splat_avx2(0x38800000u));
    const __m256i scaled =
        _mm256_cvttps_epi32(_mm256_mul_ps(_mm256_castsi256_ps(small), _mm256_set1_ps(1099511627776.0f)));
    const __m256i subnormal = _mm256_srli_epi32(_mm256_add_epi32(scaled, draws), 16);
    const __m256i rounded = _mm256_or_si256(sign, _mm256_blendv_epi8(subnormal, normal, normal_range));
    return _mm256_blendv_epi8(narrow16_avx2<Storage>(x), rounded, finite);
  }
}

/// Whether every lane of a float32 pattern lies in [2^-14, 65504), float16's normal range below its
/// largest finite value, where the stochastic carry is the draw's top 13 bits added to the pattern
/// and the cut is a truncation toward zero (float16_normal_lanes of the AVX-512 build).
ZOTORCH_CPU_AVX2_F16C_TARGET ZOTORCH_CPU_INLINE bool float16_normal_lanes_avx2(__m256i bits) {
  const __m256i rebased = _mm256_sub_epi32(_mm256_and_si256(bits, splat_avx2(0x7FFFFFFFu)), splat_avx2(0x38800000u));
  const __m256i last = splat_avx2(0x477FE000u - 0x38800000u - 1u);
  return _mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_min_epu32(rebased, last), rebased)) == -1;
}

/// The 8 stored values at p, widened as widen16_avx2 widens them; float16 converts straight from
/// the load unless a lane is inf or NaN.
template <class Storage>
ZOTORCH_CPU_AVX2_F16C_TARGET ZOTORCH_CPU_INLINE __m256 load_widen16_avx2(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (std::is_same_v<Storage, Float16Storage>) {
    const __m128i exponent = _mm_set1_epi16(0x7C00);
    if (_mm_movemask_epi8(_mm_cmpeq_epi16(_mm_and_si128(h, exponent), exponent)) == 0) return _mm256_cvtph_ps(h);
  }
  return widen16_avx2<Storage>(_mm256_cvtepu16_epi32(h));
}

/// The stochastic-rounding draws of one chunk in block order: blocks[b] holds the four Philox words
/// of rounding block b, whose eight 16-bit halves in memory order are the draws of elements
/// 8b .. 8b + 7 (rounding_bits16), so one zero-extending load gives them in 32-bit lanes
/// (draws16_avx2). A 4 × 8 transpose of the Philox lanes instead of rounding_chunk's element loop.
ZOTORCH_CPU_AVX2_F16C_TARGET ZOTORCH_CPU_INLINE void rounding_blocks_avx2(uint64_t key, uint32_t tensor_id,
                                                                         int64_t chunk, uint32_t (*blocks)[4]) {
  constexpr int kBlocks = static_cast<int>(kCpuChunk / kRoundingBlock);
  alignas(32) uint32_t words[4][kBlocks];
  philox_batch<true, kBlocks>(key, tensor_id, kRoundingProbe, static_cast<uint64_t>(chunk) * kBlocks, words);
  for (int g = 0; g < kBlocks; g += 8) {
    const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(words[0] + g));
    const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(words[1] + g));
    const __m256i w2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(words[2] + g));
    const __m256i w3 = _mm256_load_si256(reinterpret_cast<const __m256i*>(words[3] + g));
    const __m256i t0 = _mm256_unpacklo_epi32(w0, w1), t1 = _mm256_unpackhi_epi32(w0, w1);  // blocks 0, 1 | 4, 5; 2, 3 | 6, 7
    const __m256i t2 = _mm256_unpacklo_epi32(w2, w3), t3 = _mm256_unpackhi_epi32(w2, w3);
    const __m256i block[4] = {_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2),   // blocks 0 | 4, 1 | 5
                              _mm256_unpacklo_epi64(t1, t3), _mm256_unpackhi_epi64(t1, t3)};  // blocks 2 | 6, 3 | 7
    for (int j = 0; j < 4; ++j) {
      _mm_store_si128(reinterpret_cast<__m128i*>(blocks[g + j]), _mm256_castsi256_si128(block[j]));
      _mm_store_si128(reinterpret_cast<__m128i*>(blocks[g + 4 + j]), _mm256_extracti128_si256(block[j], 1));
    }
  }
}

/// The draws of elements 8b .. 8b + 7 from rounding_blocks_avx2's output, one per 32-bit lane.
ZOTORCH_CPU_AVX2_F16C_TARGET ZOTORCH_CPU_INLINE __m256i draws16_avx2(const uint32_t (*blocks)[4], int b) {
  return _mm256_cvtepu16_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(blocks[b])));
}

/// The rounding of y to the storage type, stored at o[0..7]; `draws` holds the lanes' 16-bit
/// rounding draws (unused to nearest). float16 to nearest stores the hardware conversion unless a lane is NaN; float16
/// stochastically rounded in its normal range is the conversion toward zero of the carried pattern.
template <class Storage, bool Stochastic>
ZOTORCH_CPU_AVX2_F16C_TARGET ZOTORCH_CPU_INLINE void store16_avx2(uint16_t* o, __m256 y, __m256i draws) {
  __m256i rounded;
  if constexpr (Stochastic) {
    if constexpr (std::is_same_v<Storage, Float16Storage>) {
      const __m256i bits = _mm256_castps_si256(y);
      if (float16_normal_lanes_avx2(bits)) {
        const __m256 carried = _mm256_castsi256_ps(_mm256_add_epi32(bits, _mm256_srli_epi32(draws, 3)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm256_cvtps_ph(carried, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
        return;
      }
    }
    rounded = narrow16_stochastic_avx2<Storage>(y, draws);
  } else {
    (void)draws;
    if constexpr (std::is_same_v<Storage, Float16Storage>) {
      if (_mm256_movemask_ps(_mm256_cmp_ps(y, y, _CMP_UNORD_Q)) == 0) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        return;
      }
    }
    rounded = narrow16_avx2<Storage>(y);
  }
  _mm_storeu_si128(reinterpret_cast<__m128i*>(o), pack16_avx2(rounded));
}

/// restore_value(_stochastic)<Storage>(x, r) of 8 lanes.
template <class Storage, bool Stochastic>
ZOTORCH_CPU_AVX2_F16C_TARGET ZOTORCH_CPU_INLINE __m256 restored16_avx2(__m256 x, __m256 r, __m256i draws) {
  const __m256 sum = _mm256_add_ps(x, r);
  if constexpr (Stochastic) {
    if constexpr (std::is_same_v<Storage, Float16Storage>) {
      // In float16's normal range the widened result is the carried pattern with its 13 low bits cut.
      const __m256i bits = _mm256_castps_si256(sum);
      if (float16_normal_lanes_avx2(bits)) {
        return _mm256_castsi256_ps(
            _mm256_and_si256(_mm256_add_epi32(bits, _mm256_srli_epi32(draws, 3)), splat_avx2(0xFFFFE000u)));
      }
    }
    return widen16_avx2<Storage>(narrow16_stochastic_avx2<Storage>(sum, draws));
  } else {
    (void)draws;
    if constexpr (std::is_same_v<Storage, Float16Storage>) {
      // Both hardware conversions, as store16_avx2 and load_widen16_avx2 take them, unless a lane is NaN.
      if (_mm256_movemask_ps(_mm256_cmp_ps(sum, sum, _CMP_UNORD_Q)) == 0) {
        return _mm256_cvtph_ps(_mm256_cvtps_ph(sum, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      }
    }
    return widen16_avx2<Storage>(narrow16_avx2<Storage>(sum));
  }
}

/// The sign bits of 8 consecutive Rademacher elements: lane k holds float32's sign bit where bit
/// first_bit + k of `word` is set (rademacher_sign_mask), else 0. One variable shift moves each
/// lane's bit to the top.
ZOTORCH_CPU_AVX2_F16C_TARGET ZOTORCH_CPU_INLINE __m256 sign_bits_avx2(uint32_t word, int first_bit) {
  const __m256i to_top = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
  return _mm256_castsi256_ps(_mm256_and_si256(
      _mm256_sllv_epi32(splat_avx2(word >> first_bit), to_top), splat_avx2(0x80000000u)));
}

/// finish16_avx512 on 8 lanes: the final pass over θ of a 16-bit linear sweep for chunks
/// first_chunk .. + n − 1 (CpuChunks::finish_linear's paths with a last term), element for element.
template <class Storage, Distribution Dist, bool Stochastic, bool Partial, int Span>
ZOTORCH_CPU_AVX2_F16C_TARGET ZOTORCH_CPU_NO_CONTRACT void finish16_avx2(
    uint16_t* out, int64_t first_chunk, int n, uint32_t tensor_id, const SweepPlan& plan, float keep, const float* s,
    float c, const uint32_t* last_words, const SweepTerm* last, bool staged, const float* restores, float cr,
    const uint32_t* first_words = nullptr, float c0 = 0.0f) {
  const __m256 keep_v = _mm256_set1_ps(keep), c_v = _mm256_set1_ps(c), cr_v = _mm256_set1_ps(cr);
  const __m256 zero = _mm256_setzero_ps();
  const __m256 sign_bit = _mm256_castsi256_ps(splat_avx2(0x80000000u));
  // 0 + (±c) is a sign flip of c' = (c == 0 ? +0 : c) by (c == 0 ? nothing : the sign bit), as in
  // finish16_avx512; likewise for cr and c0.
  const bool c_zero = c == 0.0f, cr_zero = cr == 0.0f, c0_zero = c0 == 0.0f;
  const __m256 c_flip_v = c_zero ? zero : c_v, c_flip_bit = c_zero ? zero : sign_bit;
  const __m256 cr_flip_v = cr_zero ? zero : cr_v, cr_flip_bit = cr_zero ? zero : sign_bit;
  const __m256 c0_flip_v = c0_zero ? zero : _mm256_set1_ps(c0), c0_flip_bit = c0_zero ? zero : sign_bit;
  constexpr int kBlocks = static_cast<int>(kCpuChunk / kRoundingBlock);
  alignas(32) uint32_t blocks[Stochastic ? kBlocks : 1][4];
  alignas(32) uint32_t restore_blocks[Stochastic ? kBlocks : 1][4];
  for (int ch = 0; ch < n; ++ch) {
    uint16_t* o = out + ch * kCpuChunk;
    const float* sc = s + ch * kCpuChunk;
    prefetch_chunk_ahead(o);
    if constexpr (Stochastic) {
      rounding_blocks_avx2(plan.rounding_key, tensor_id, first_chunk + ch, blocks);
      if (staged) rounding_blocks_avx2(restore_rounding_key(plan.rounding_key), tensor_id, first_chunk + ch, restore_blocks);
    }
    alignas(32) float z[Dist == Distribution::Gaussian ? kCpuChunk : 1];
    if constexpr (Dist == Distribution::Gaussian) gaussian_chunk_avx2(last->key, tensor_id, last->probe, first_chunk + ch, z);
    for (int i = 0; i < kCpuChunk; i += 8) {
      __m256 direction, restore = zero;
      const __m256 x_in = load_widen16_avx2<Storage>(o + i);
      if constexpr (Dist == Distribution::Rademacher) {
        const __m256 negative = sign_bits_avx2(last_words[(i / 32) * Span + ch], i % 32);
        if constexpr (Partial) {
          __m256 partial;
          if (first_words != nullptr) {
            const __m256 negative0 = sign_bits_avx2(first_words[(i / 32) * Span + ch], i % 32);
            partial = _mm256_xor_ps(c0_flip_v, _mm256_and_ps(negative0, c0_flip_bit));  // = 0 + c0·z0
          } else {
            partial = _mm256_load_ps(sc + i);
          }
          direction = _mm256_add_ps(partial, _mm256_xor_ps(c_v, negative));
        } else {
          direction = _mm256_xor_ps(c_flip_v, _mm256_and_ps(negative, c_flip_bit));  // = 0 + c·z
        }
        if (staged) {
          if (restores != nullptr) {
            restore = _mm256_add_ps(_mm256_load_ps(restores + ch * kCpuChunk + i), _mm256_xor_ps(cr_v, negative));
          } else {
            restore = _mm256_xor_ps(cr_flip_v, _mm256_and_ps(negative, cr_flip_bit));  // = 0 + cr·z
          }
        }
      } else {
        const __m256 z_v = _mm256_load_ps(z + i);
        direction = _mm256_add_ps(Partial ? _mm256_load_ps(sc + i) : zero, _mm256_mul_ps(c_v, z_v));
        if (staged) {
          const __m256 stored = restores != nullptr ? _mm256_load_ps(restores + ch * kCpuChunk + i) : zero;
          restore = _mm256_add_ps(stored, _mm256_mul_ps(cr_v, z_v));
        }
      }
      const __m256i no_draws = _mm256_setzero_si256();
      const __m256 x =
          staged ? restored16_avx2<Storage, Stochastic>(x_in, restore, Stochastic ? draws16_avx2(restore_blocks, i / 8) : no_draws)
                 : x_in;
      const __m256 y = _mm256_add_ps(_mm256_mul_ps(keep_v, x), direction);
      store16_avx2<Storage, Stochastic>(o + i, y, Stochastic ? draws16_avx2(blocks, i / 8) : no_draws);
    }
  }
}
#endif  // ZOTORCH_CPU_AVX2_DISPATCH

#if defined(ZOTORCH_CPU_AVX512_SWEEP)
// ---------------------------------------------------------------------------------------------
// The 16-bit pass over θ in AVX-512 intrinsics (docs/performance.md "16-bit sweeps"):
// GCC's auto-vectorised loop spends most of its time converting between uint16 storage and float
// lanes. Here 16 elements take one 256-bit load, the sign bits of one Philox word become a mask
// register directly, and the widen / round-to-nearest / stochastic rounding of sweep.h are spelled
// in vector integer and float operations, the same operations in the same order, so every bit
// equals the portable build's (tests/test_sweep_cpu.cpp compares them).
#define ZOTORCH_CPU_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

/// Storage::widen of 16 lanes holding 16-bit patterns (bits above 15 ignored). float16 converts in
/// hardware, exact for every number; NaN lanes are rebuilt as Float16Storage::widen spells them
/// (the hardware would quieten a signalling NaN).
template <class Storage>
ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_INLINE __m512 widen16_avx512(__m512i h) {
  if constexpr (std::is_same_v<Storage, BFloat16Storage>) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
  } else {
    const __m512 converted = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h));
    const __m512i exponent_bits = _mm512_and_si512(h, _mm512_set1_epi32(0x7C00));
    const __mmask16 special = _mm512_cmpeq_epi32_mask(exponent_bits, _mm512_set1_epi32(0x7C00));
    const __m512i rebuilt = _mm512_or_si512(
        _mm512_slli_epi32(_mm512_and_si512(h, _mm512_set1_epi32(0x8000)), 16),
        _mm512_or_si512(_mm512_set1_epi32(0x7F800000), _mm512_slli_epi32(_mm512_and_si512(h, _mm512_set1_epi32(0x3FF)), 13)));
    return _mm512_mask_mov_ps(converted, special, _mm512_castsi512_ps(rebuilt));
  }
}

/// Storage::narrow (round to nearest even) of 16 lanes; the 16-bit patterns in 32-bit lanes.
/// float16 converts in hardware (round to nearest even, overflow to inf, gradual underflow: the same
/// numbers as Float16Storage::narrow); NaN lanes become the canonical quiet NaN it returns.
template <class Storage>
ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_INLINE __m512i narrow16_avx512(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFFFF)),
                                                _mm512_set1_epi32(0x7F800000));
  if constexpr (std::is_same_v<Storage, BFloat16Storage>) {
    const __m512i high = _mm512_srli_epi32(bits, 16);
    const __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), _mm512_and_si512(high, _mm512_set1_epi32(1))),
        16);
    return _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(high, _mm512_set1_epi32(0x0040)));
  } else {
    const __m512i converted = _mm512_cvtepu16_epi32(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m512i quiet_nan = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x8000)),
                                              _mm512_set1_epi32(0x7E00));
    return _mm512_mask_mov_epi32(converted, nan, quiet_nan);
  }
}

/// narrow_stochastic<Storage> of 16 lanes, operation for operation; `bits16` holds the 16 random
/// bits of each lane.
template <class Storage>
ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_INLINE __m512i narrow16_stochastic_avx512(__m512 x, __m512i bits16) {
  if constexpr (std::is_same_v<Storage, BFloat16Storage>) {
    // The draw added below the kept half, the sum cut off; NaN lanes as narrow16_avx512 rounds them.
    const __m512i bits = _mm512_castps_si512(x);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFFFF)),
                                                  _mm512_set1_epi32(0x7F800000));
    const __m512i carried = _mm512_srli_epi32(_mm512_add_epi32(bits, bits16), 16);
    return _mm512_mask_mov_epi32(carried, nan, _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x0040)));
  } else {
    // float16: the normal and the subnormal carry, selected by magnitude; non-finite lanes as
    // narrow16_avx512 rounds them.
    const __m512i bits = _mm512_castps_si512(x);
    const __m512i magnitude = _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFFFF));
    const __mmask16 finite = _mm512_cmplt_epu32_mask(magnitude, _mm512_set1_epi32(0x7F800000));
    const __mmask16 normal_range = _mm512_cmpge_epu32_mask(magnitude, _mm512_set1_epi32(0x38800000));
    const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x8000));
    const __m512i normal_pattern =
        _mm512_sub_epi32(_mm512_srli_epi32(_mm512_add_epi32(magnitude, _mm512_srli_epi32(bits16, 3)), 13),
                         _mm512_set1_epi32((127 - 15) << 10));
    const __m512i normal = _mm512_min_epu32(normal_pattern, _mm512_set1_epi32(0x7C00));
    // Every lane finite and in float16's normal range, as nearly all weights are: the normal carry
    // alone (the selects below would pick it in every lane).
    if (static_cast<uint16_t>(finite & normal_range) == 0xFFFFu) return _mm512_or_si512(sign, normal);
    const __m512i small = _mm512_min_epu32(magnitude, _mm512_set1_epi32(0x38800000));
    const __m512i scaled = _mm512_cvttps_epi32(_mm512_mul_ps(_mm512_castsi512_ps(small), _mm512_set1_ps(1099511627776.0f)));
    const __m512i subnormal = _mm512_srli_epi32(_mm512_add_epi32(scaled, bits16), 16);
    const __m512i rounded = _mm512_or_si512(sign, _mm512_mask_blend_epi32(normal_range, subnormal, normal));
    return _mm512_mask_blend_epi32(finite, narrow16_avx512<Storage>(x), rounded);
  }
}

/// The 16-bit draws of lanes o[i..i+15] from rounding_chunks16_avx512's output.
ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_INLINE __m512i load_bits16_avx512(const uint16_t* bits16) {
  return _mm512_cvtepu16_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(bits16)));
}

/// rounding_chunk for kChunks consecutive chunks, as 16-bit values in element order: block b's
/// four words, little-endian, are the draws of elements 8b .. 8b + 7, so each block's words are
/// joined into 128 bits straight from philox_rounds_avx512's registers (two shifts, two merges and
/// two permutes per 8 blocks) and stored. Two chunks per call keep four independent groups of
/// Philox chains in flight.
template <int kChunks>
ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_INLINE void rounding_chunks16_avx512(uint64_t key, uint32_t tensor_id,
                                                                          int64_t first_chunk, uint16_t* bits16) {
  constexpr int kBlocks = static_cast<int>(kCpuChunk / kRoundingBlock) * kChunks;
  static_assert(kBlocks == 32, "four groups of 8 blocks");
  __m512i c0[4], c1[4], c2[4], c3[4];
  philox_rounds_avx512<4>(key, tensor_id, kRoundingProbe, static_cast<uint64_t>(first_chunk) * (kBlocks / kChunks), c0, c1,
                          c2, c3);
  const __m512i low_word = _mm512_set1_epi64(0xFFFFFFFFll);
  // Output qword 2j of a group takes words 0-1 of block j, qword 2j + 1 words 2-3.
  const __m512i first_half = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
  const __m512i second_half = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) {
    // 0xEA: (a & b) | c, the low word kept, the next word moved above it.
    const __m512i words01 = _mm512_ternarylogic_epi64(c0[g], low_word, _mm512_slli_epi64(c1[g], 32), 0xEA);
    const __m512i words23 = _mm512_ternarylogic_epi64(c2[g], low_word, _mm512_slli_epi64(c3[g], 32), 0xEA);
    uint16_t* out = bits16 + 8 * g * kRoundingBlock;
    _mm512_store_si512(reinterpret_cast<__m512i*>(out), _mm512_permutex2var_epi64(words01, first_half, words23));
    _mm512_store_si512(reinterpret_cast<__m512i*>(out + 32), _mm512_permutex2var_epi64(words01, second_half, words23));
  }
}

/// The 16 stored values at p, widened as widen16_avx512 widens them. float16 converts straight from
/// the 256-bit load (one shuffle instead of three: the 16-bit sweep is bound by the shuffle port)
/// unless a lane is inf or NaN, which takes the exact rebuild.
template <class Storage>
ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_INLINE __m512 load_widen16_avx512(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  if constexpr (std::is_same_v<Storage, Float16Storage>) {
    const __m256i exponent = _mm256_set1_epi16(0x7C00);
    if (_mm256_cmpeq_epi16_mask(_mm256_and_si256(h, exponent), exponent) == 0) return _mm512_cvtph_ps(h);
  }
  return widen16_avx512<Storage>(_mm512_cvtepu16_epi32(h));
}

/// Whether the CPU converts float32 to bfloat16 in one instruction (AVX512-BF16) and Best allows it.
inline bool cpu_use_avx512_bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has && cpu_kernels() == CpuKernels::Best;
}

/// narrow16_avx512<BFloat16Storage>(y) packed to 16 bits by AVX512-BF16's vcvtneps2bf16, when no
/// lane is a float32 subnormal (which that instruction reads as zero): for every other input, NaN
/// included, it computes the same bits (docs/performance.md "Rademacher sweeps at the memory
/// limit"). False: use the integer path. Only for CPUs where cpu_use_avx512_bf16() holds.
ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_INLINE bool narrow16_bf16_hardware(__m512 y, __m256i& packed) {
  if (_mm512_fpclass_ps_mask(y, 0x20) != 0) return false;  // 0x20: subnormal
  // In assembly: the intrinsic would need the avx512bf16 target on every function it is inlined
  // through, and the CPU is checked at run time instead.
  __asm__("vcvtneps2bf16 %1, %0" : "=v"(packed) : "v"(y));
  return true;
}

/// Whether every lane of a float32 pattern lies in float16's normal range below its largest finite
/// value, [2^-14, 65504): there the stochastic carry of narrow_stochastic<Float16Storage> never
/// reaches inf, and adding the top 13 draw bits to the pattern then cutting its 13 low bits is a
/// truncation toward zero.
ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_INLINE bool float16_normal_lanes(__m512i bits) {
  const __m512i rebased = _mm512_sub_epi32(_mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFFFF)),
                                           _mm512_set1_epi32(0x38800000));
  return _mm512_cmpge_epu32_mask(rebased, _mm512_set1_epi32(0x477FE000 - 0x38800000)) == 0;
}

/// The rounding of y to the storage type, stored at o[0..15]. float16 to nearest stores the
/// hardware conversion directly unless a lane is NaN (narrow16_avx512 gives the same bits);
/// bfloat16 to nearest does so with HardwareBf16 (narrow16_bf16_hardware).
template <class Storage, bool Stochastic, bool HardwareBf16 = false>
ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_INLINE void store16_avx512(uint16_t* o, __m512 y, const uint16_t* bits16) {
  if constexpr (!Stochastic && std::is_same_v<Storage, Float16Storage>) {
    if (_mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q) == 0) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm512_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      return;
    }
  }
  if constexpr (!Stochastic && HardwareBf16 && std::is_same_v<Storage, BFloat16Storage>) {
    __m256i packed;
    if (narrow16_bf16_hardware(y, packed)) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), packed);
      return;
    }
  }
  __m512i rounded;
  if constexpr (Stochastic) {
    const __m512i draws = load_bits16_avx512(bits16);
    if constexpr (std::is_same_v<Storage, Float16Storage>) {
      // In float16's normal range the carry is the draw's top 13 bits added to y's pattern, and the
      // cut is the hardware's conversion toward zero (float16_normal_lanes): the same bits as the
      // integer carry, packed by the conversion itself.
      const __m512i bits = _mm512_castps_si512(y);
      if (float16_normal_lanes(bits)) {
        const __m512 carried = _mm512_castsi512_ps(_mm512_add_epi32(bits, _mm512_srli_epi32(draws, 3)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm512_cvtps_ph(carried, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
        return;
      }
    }
    rounded = narrow16_stochastic_avx512<Storage>(y, draws);
  } else {
    (void)bits16;
    rounded = narrow16_avx512<Storage>(y);
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm512_cvtepi32_epi16(rounded));
}

/// restore_value(_stochastic)<Storage>(x, r) of 16 lanes.
template <class Storage, bool Stochastic, bool HardwareBf16 = false>
ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_INLINE __m512 restored16_avx512(__m512 x, __m512 r, const uint16_t* bits16) {
  const __m512 sum = _mm512_add_ps(x, r);
  if constexpr (!Stochastic && HardwareBf16 && std::is_same_v<Storage, BFloat16Storage>) {
    __m256i packed;
    if (narrow16_bf16_hardware(sum, packed)) return widen16_avx512<Storage>(_mm512_cvtepu16_epi32(packed));
  }
  if constexpr (!Stochastic && std::is_same_v<Storage, Float16Storage>) {
    // Both hardware conversions, as store16_avx512 and load_widen16_avx512 take them: the same
    // numbers, ±inf included, unless a lane is NaN.
    if (_mm512_cmp_ps_mask(sum, sum, _CMP_UNORD_Q) == 0) {
      return _mm512_cvtph_ps(_mm512_cvtps_ph(sum, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
  }
  if constexpr (Stochastic) {
    const __m512i draws = load_bits16_avx512(bits16);
    if constexpr (std::is_same_v<Storage, Float16Storage>) {
      // In float16's normal range (float16_normal_lanes) the widened result is the carried pattern
      // with its 13 low bits cut: no conversion either way.
      const __m512i bits = _mm512_castps_si512(sum);
      if (float16_normal_lanes(bits)) {
        return _mm512_castsi512_ps(_mm512_and_si512(_mm512_add_epi32(bits, _mm512_srli_epi32(draws, 3)),
                                                     _mm512_set1_epi32(static_cast<int>(0xFFFFE000u))));
      }
    }
    return widen16_avx512<Storage>(narrow16_stochastic_avx512<Storage>(sum, draws));
  } else {
    (void)bits16;
    return widen16_avx512<Storage>(narrow16_avx512<Storage>(sum));
  }
}

/// The final pass over θ of a 16-bit linear sweep for chunks first_chunk .. + n − 1:
/// CpuChunks::finish_linear's paths with a last term (plain, staged with the restore in the last
/// term, staged with stored restores), element for element. Rademacher signs come from the
/// Philox words as masks; Gaussian values from gaussian_chunk, as the portable loop draws them.
template <class Storage, Distribution Dist, bool Stochastic, bool Partial, int Span, bool HardwareBf16 = false>
ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_NO_CONTRACT void finish16_avx512(
    uint16_t* out, int64_t first_chunk, int n, uint32_t tensor_id, const SweepPlan& plan, float keep, const float* s,
    float c, const uint32_t* last_words, const SweepTerm* last, bool staged, const float* restores, float cr,
    const uint32_t* first_words = nullptr, float c0 = 0.0f) {
  const __m512 keep_v = _mm512_set1_ps(keep), c_v = _mm512_set1_ps(c), cr_v = _mm512_set1_ps(cr);
  const __m512 sign_bit = _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(0x80000000u)));
  const __m512 zero = _mm512_setzero_ps();
  // Rademacher without a partial sum: 0 + (±c) is ±c itself unless c is ±0, where it is +0 for both
  // signs. So the sum is a sign flip of c' = (c == 0 ? +0 : c) by flip = (c == 0 ? no bit : the sign
  // bit), one instruction fewer per 16 elements, the same bits (also for NaN c: the later add
  // quietens it either way). Likewise for cr, which r = 0 + cr·z takes when no restores are stored.
  const bool c_zero = c == 0.0f, cr_zero = cr == 0.0f;
  const __m512 c_flip_v = c_zero ? zero : c_v, c_flip_bit = c_zero ? zero : sign_bit;
  const __m512 cr_flip_v = cr_zero ? zero : cr_v, cr_flip_bit = cr_zero ? zero : sign_bit;
  // With first_words, the partial sum s = 0 + c0·z0 of one stored Rademacher term, formed here
  // instead of in a pass over s before this one.
  const bool c0_zero = c0 == 0.0f;
  const __m512 c0_flip_v = c0_zero ? zero : _mm512_set1_ps(c0), c0_flip_bit = c0_zero ? zero : sign_bit;
  // The rounding draws of two chunks at a time; chunk ch uses half ch % 2.
  alignas(64) uint16_t bits16_pair[Stochastic ? 2 * kCpuChunk : 1];
  alignas(64) uint16_t restore_bits16_pair[Stochastic ? 2 * kCpuChunk : 1];
  for (int ch = 0; ch < n; ++ch) {
    uint16_t* o = out + ch * kCpuChunk;
    const float* sc = s + ch * kCpuChunk;
    prefetch_chunk_ahead(o);
    if constexpr (Stochastic) {
      if (ch % 2 == 0) {
        rounding_chunks16_avx512<2>(plan.rounding_key, tensor_id, first_chunk + ch, bits16_pair);
        if (staged) {
          rounding_chunks16_avx512<2>(restore_rounding_key(plan.rounding_key), tensor_id, first_chunk + ch,
                                      restore_bits16_pair);
        }
      }
    }
    const uint16_t* bits16 = bits16_pair + (Stochastic ? (ch % 2) * kCpuChunk : 0);
    const uint16_t* restore_bits16 = restore_bits16_pair + (Stochastic ? (ch % 2) * kCpuChunk : 0);
    alignas(64) float z[Dist == Distribution::Gaussian ? kCpuChunk : 1];
    if constexpr (Dist == Distribution::Gaussian) gaussian_chunk<true, true>(last->key, tensor_id, last->probe, first_chunk + ch, z);
    for (int i = 0; i < kCpuChunk; i += 16) {
      // c·z and cr·z: a sign flip where the Rademacher bit is set (accumulate_sign), or the product
      // with the Gaussian value (accumulate_value).
      __m512 c_z, cr_z, direction, restore;
      const __m512 x_in = load_widen16_avx512<Storage>(o + i);
      if constexpr (Dist == Distribution::Rademacher) {
        const __mmask16 negative = static_cast<__mmask16>(last_words[(i / 32) * Span + ch] >> (i % 32));
        if constexpr (Partial) {
          c_z = _mm512_mask_xor_ps(c_v, negative, c_v, sign_bit);
          __m512 partial;
          if (first_words != nullptr) {
            const __mmask16 negative0 = static_cast<__mmask16>(first_words[(i / 32) * Span + ch] >> (i % 32));
            partial = _mm512_mask_xor_ps(c0_flip_v, negative0, c0_flip_v, c0_flip_bit);  // = 0 + c0·z0
          } else {
            partial = _mm512_load_ps(sc + i);
          }
          direction = _mm512_add_ps(partial, c_z);
        } else {
          direction = _mm512_mask_xor_ps(c_flip_v, negative, c_flip_v, c_flip_bit);  // = 0 + c·z
        }
        if (staged) {
          if (restores != nullptr) {
            cr_z = _mm512_mask_xor_ps(cr_v, negative, cr_v, sign_bit);
            restore = _mm512_add_ps(_mm512_load_ps(restores + ch * kCpuChunk + i), cr_z);
          } else {
            restore = _mm512_mask_xor_ps(cr_flip_v, negative, cr_flip_v, cr_flip_bit);  // = 0 + cr·z
          }
        }
      } else {
        const __m512 z_v = _mm512_load_ps(z + i);
        c_z = _mm512_mul_ps(c_v, z_v);
        cr_z = _mm512_mul_ps(cr_v, z_v);
        direction = _mm512_add_ps(Partial ? _mm512_load_ps(sc + i) : zero, c_z);
        if (staged) {
          const __m512 stored = restores != nullptr ? _mm512_load_ps(restores + ch * kCpuChunk + i) : zero;
          restore = _mm512_add_ps(stored, cr_z);
        }
      }
      __m512 x = x_in;
      if (staged) {
        x = restored16_avx512<Storage, Stochastic, HardwareBf16>(x_in, restore, restore_bits16 + (Stochastic ? i : 0));
      }
      const __m512 y = _mm512_add_ps(_mm512_mul_ps(keep_v, x), direction);
      store16_avx512<Storage, Stochastic, HardwareBf16>(o + i, y, bits16 + (Stochastic ? i : 0));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Stochastically rounded bfloat16 Rademacher passes on element pairs (docs/performance.md
// "Stochastic rounding on element pairs"). One 512-bit load holds 32 elements: 32-bit lane k holds
// element 2k in its low half and element 2k + 1 in its high half. rounding_bits16 pairs the draws
// the same way (element 2k takes the low half of a word, 2k + 1 its high half), so the draws of the
// 32 elements are 16 words already in lane order: an and or a shift, no shuffle. The sign masks of
// the even and the odd elements are the alternate bits of the Rademacher word (pext), a bfloat16
// widens with a shift or an and, and the two rounded halves merge into one store. Lane for lane the
// arithmetic is finish16_avx512's; tests/test_sweep_cpu.cpp compares the bits. float16 stays on
// finish16_avx512: its hardware widening of 16 consecutive values is cheaper than the integer one
// pairs would need.
#define ZOTORCH_CPU_AVX512_PAIRS_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,bmi2")))

/// Widen, restore rounding and final stochastic rounding of 32 bfloat16 elements held as pairs.
struct BFloat16Pairs {
  static ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_INLINE void widen(__m512i v, __m512& even, __m512& odd) {
    even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  /// narrow_stochastic<BFloat16Storage> of 16 lanes, left in the upper halves (the lower halves
  /// hold junk): the draw added to x's pattern; NaN lanes get narrow's quiet NaN, x's pattern with
  /// bit 22 set, from the same masked instruction, so no branch.
  static ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_INLINE __m512i carried(__m512 x, __m512i draws) {
    const __m512i bits = _mm512_castps_si512(x);
    const __mmask16 nan = _mm512_fpclass_ps_mask(x, 0x81);  // 0x81: quiet or signalling NaN
    return _mm512_mask_or_epi32(_mm512_add_epi32(bits, draws), nan, bits, _mm512_set1_epi32(0x00400000));
  }
  /// restore_value_stochastic of 16 lanes, `draws` in the low halves: the carried pattern with its
  /// lower half cleared is the widened result.
  static ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_INLINE __m512 restored(__m512 x, __m512 r, __m512i draws) {
    return _mm512_castsi512_ps(
        _mm512_and_si512(carried(_mm512_add_ps(x, r), draws), _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  /// narrow_stochastic of the even and the odd lanes, merged into 32 stored values.
  static ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_INLINE __m512i narrow(__m512 even, __m512 odd, __m512i words) {
    const __m512i even_carried = carried(even, _mm512_and_si512(words, _mm512_set1_epi32(0xFFFF)));
    const __m512i odd_carried = carried(odd, _mm512_srli_epi32(words, 16));
    return _mm512_ternarylogic_epi32(_mm512_srli_epi32(even_carried, 16), odd_carried,
                                     _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)), 0xF8);  // a | (b & c)
  }
};

/// 32 consecutive floats split into the even and the odd elements.
ZOTORCH_CPU_AVX512_TARGET ZOTORCH_CPU_INLINE void load_pairs_ps(const float* p, __m512& even, __m512& odd) {
  const __m512 first = _mm512_load_ps(p), second = _mm512_load_ps(p + 16);
  even = _mm512_permutex2var_ps(first, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), second);
  odd = _mm512_permutex2var_ps(first, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), second);
}

/// finish16_avx512 for bfloat16 with Rademacher directions and stochastic rounding, on element
/// pairs: the same paths (plain, Partial from s or from first_words, staged with or without stored restores).
template <bool Partial, int Span>
ZOTORCH_CPU_AVX512_PAIRS_TARGET ZOTORCH_CPU_NO_CONTRACT void finish_bf16_pairs_stochastic_avx512(
    uint16_t* out, int64_t first_chunk, int n, uint32_t tensor_id, const SweepPlan& plan, float keep, const float* s,
    float c, const uint32_t* last_words, bool staged, const float* restores, float cr, const uint32_t* first_words,
    float c0) {
  using Lanes = BFloat16Pairs;
  const __m512 keep_v = _mm512_set1_ps(keep), c_v = _mm512_set1_ps(c), cr_v = _mm512_set1_ps(cr);
  const __m512 sign_bit = _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(0x80000000u)));
  const __m512 zero = _mm512_setzero_ps();
  // Sign flips of c, cr and c0 for the sums that start at 0, as in finish16_avx512.
  const bool c_zero = c == 0.0f, cr_zero = cr == 0.0f, c0_zero = c0 == 0.0f;
  const __m512 c_flip_v = c_zero ? zero : c_v, c_flip_bit = c_zero ? zero : sign_bit;
  const __m512 cr_flip_v = cr_zero ? zero : cr_v, cr_flip_bit = cr_zero ? zero : sign_bit;
  const __m512 c0_flip_v = c0_zero ? zero : _mm512_set1_ps(c0), c0_flip_bit = c0_zero ? zero : sign_bit;
  const __m512i low_half = _mm512_set1_epi32(0xFFFF);
  constexpr uint32_t kEvenBits = 0x55555555u, kOddBits = 0xAAAAAAAAu;
  alignas(64) uint16_t bits16_pair[2 * kCpuChunk];
  alignas(64) uint16_t restore_bits16_pair[2 * kCpuChunk];
  for (int ch = 0; ch < n; ++ch) {
    uint16_t* o = out + ch * kCpuChunk;
    prefetch_chunk_ahead(o);
    if (ch % 2 == 0) {
      rounding_chunks16_avx512<2>(plan.rounding_key, tensor_id, first_chunk + ch, bits16_pair);
      if (staged) {
        rounding_chunks16_avx512<2>(restore_rounding_key(plan.rounding_key), tensor_id, first_chunk + ch,
                                    restore_bits16_pair);
      }
    }
    const uint16_t* bits16 = bits16_pair + (ch % 2) * kCpuChunk;
    const uint16_t* restore_bits16 = restore_bits16_pair + (ch % 2) * kCpuChunk;
    for (int q = 0; q < 4; ++q) {
      const int i = 32 * q;
      const uint32_t word = last_words[q * Span + ch];
      const __mmask16 even_negative = static_cast<__mmask16>(_pext_u32(word, kEvenBits));
      const __mmask16 odd_negative = static_cast<__mmask16>(_pext_u32(word, kOddBits));
      __m512 x_even, x_odd;
      Lanes::widen(_mm512_loadu_si512(o + i), x_even, x_odd);
      __m512 direction_even, direction_odd;
      if constexpr (Partial) {
        __m512 partial_even, partial_odd;
        if (first_words != nullptr) {
          const uint32_t word0 = first_words[q * Span + ch];
          partial_even = _mm512_mask_xor_ps(c0_flip_v, static_cast<__mmask16>(_pext_u32(word0, kEvenBits)), c0_flip_v,
                                            c0_flip_bit);
          partial_odd = _mm512_mask_xor_ps(c0_flip_v, static_cast<__mmask16>(_pext_u32(word0, kOddBits)), c0_flip_v,
                                           c0_flip_bit);
        } else {
          load_pairs_ps(s + ch * kCpuChunk + i, partial_even, partial_odd);
        }
        direction_even = _mm512_add_ps(partial_even, _mm512_mask_xor_ps(c_v, even_negative, c_v, sign_bit));
        direction_odd = _mm512_add_ps(partial_odd, _mm512_mask_xor_ps(c_v, odd_negative, c_v, sign_bit));
      } else {
        (void)s;
        direction_even = _mm512_mask_xor_ps(c_flip_v, even_negative, c_flip_v, c_flip_bit);
        direction_odd = _mm512_mask_xor_ps(c_flip_v, odd_negative, c_flip_v, c_flip_bit);
      }
      if (staged) {
        __m512 restore_even, restore_odd;
        if (restores != nullptr) {
          __m512 stored_even, stored_odd;
          load_pairs_ps(restores + ch * kCpuChunk + i, stored_even, stored_odd);
          restore_even = _mm512_add_ps(stored_even, _mm512_mask_xor_ps(cr_v, even_negative, cr_v, sign_bit));
          restore_odd = _mm512_add_ps(stored_odd, _mm512_mask_xor_ps(cr_v, odd_negative, cr_v, sign_bit));
        } else {
          restore_even = _mm512_mask_xor_ps(cr_flip_v, even_negative, cr_flip_v, cr_flip_bit);
          restore_odd = _mm512_mask_xor_ps(cr_flip_v, odd_negative, cr_flip_v, cr_flip_bit);
        }
        const __m512i restore_words = _mm512_load_si512(restore_bits16 + i);
        x_even = Lanes::restored(x_even, restore_even, _mm512_and_si512(restore_words, low_half));
        x_odd = Lanes::restored(x_odd, restore_odd, _mm512_srli_epi32(restore_words, 16));
      }
      const __m512 y_even = _mm512_add_ps(_mm512_mul_ps(keep_v, x_even), direction_even);
      const __m512 y_odd = _mm512_add_ps(_mm512_mul_ps(keep_v, x_odd), direction_odd);
      _mm512_storeu_si512(o + i, Lanes::narrow(y_even, y_odd, _mm512_load_si512(bits16 + i)));
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // ZOTORCH_CPU_AVX512_SWEEP

// ---------------------------------------------------------------------------------------------
// The sweep of whole chunks. Per element the order is sweep.h's: s, m, v (and r, restore terms
// only, in a staged sweep) start at 0 and take terms 0, 1, 2, ... in turn, then x ← round(x + r)
// when staged, then y = update(x), then one rounding.

template <class Storage, Distribution Dist, bool Adaptive, bool Stochastic, bool Avx2, bool Avx512 = false>
struct CpuChunks {
  using S = typename Storage::storage;
  using A = typename Storage::acc;
  static constexpr int kSpan = Dist == Distribution::Rademacher && !Adaptive ? kCpuRademacherSpan : kCpuSpan;
  static constexpr int kElements = kSpan * static_cast<int>(kCpuChunk);
  static constexpr int kMoments = Adaptive ? kElements : 1;

  /// Sweeps chunks first_chunk .. first_chunk + n - 1 (1 ≤ n ≤ kSpan), all full, at `out`.
  /// Terms before the last accumulate into s (m, v) in L1; the last term of a linear sweep is added
  /// in the pass that reads and writes θ, so a one-term sweep (every perturbation) keeps s in
  /// registers and touches each element once. In a staged sweep the restore terms also accumulate
  /// into r, and the pass over θ rounds θ + r before the rest (sweep.h).
  ZOTORCH_CPU_INLINE static void sweep(S* out, int64_t first_chunk, int n, uint32_t tensor_id, const SweepPlan& plan,
                                       const ResolvedGroup<A>& group) {
    alignas(64) A s[kElements];
    alignas(64) A r[kElements];
    alignas(64) A m[kMoments];
    alignas(64) A v[kMoments];
    const int count = n * static_cast<int>(kCpuChunk);
    const int fused = (!Adaptive && plan.num_terms > 0) ? 1 : 0;  // terms added in the final pass
    const int stored = plan.num_terms - fused;                      // terms accumulated into s
    const bool staged = group.staged;
    // r is needed only when a term before the final pass restores: FZOO's and MeZO's transitions
    // put their one restore term last (Step::sweep_to), so their r stays in registers.
    const bool stored_restores = staged && (Adaptive || !no_restore(group, 0, stored));
#if defined(ZOTORCH_CPU_AVX512_SWEEP)
    if constexpr (Avx512 && Storage::is_16_bit && Dist == Distribution::Rademacher && !Adaptive) {
      // Two terms, the first without a restore (FZOO's probe transition: remove one probe, add the
      // next): the pass over θ forms s = 0 + c0·z0 from the first term's signs itself, so s never
      // goes through memory. Same operations, same order.
      if (stored == 1 && fused == 1 && !stored_restores) {
        alignas(64) uint32_t first_words[4][kSpan], last_words[4][kSpan];
        const SweepTerm& first = plan.terms[0];
        const SweepTerm& last = plan.terms[1];
        philox_batch<Avx2, kSpan>(first.key, tensor_id, first.probe, static_cast<uint64_t>(first_chunk), first_words);
        philox_batch<Avx2, kSpan>(last.key, tensor_id, last.probe, static_cast<uint64_t>(first_chunk), last_words);
        finish_linear<true>(out, first_chunk, n, tensor_id, plan, group, s, group.coefficient[1], &last_words[0][0], &last,
                            staged, nullptr, group.restore[1], &first_words[0][0], group.coefficient[0]);
        return;
      }
    }
#endif
    if (Adaptive || stored > 0) {
      for (int i = 0; i < count; ++i) s[i] = A(0);
    }
    if (stored_restores) {
      for (int i = 0; i < count; ++i) r[i] = A(0);
    }
    if constexpr (Adaptive) {
      for (int i = 0; i < count; ++i) m[i] = A(0);
      for (int i = 0; i < count; ++i) v[i] = A(0);
    }
    int k = 0;
    while (k < stored) {
      if constexpr (Dist == Distribution::Rademacher && !Adaptive) {
        // Several terms per pass over s: one load and store of s per element for four terms.
        // Terms with a restore coefficient take the one-term path, which also accumulates r.
        if (k + 4 <= stored && no_restore(group, k, 4)) {
          accumulate_signs<4>(s, k, first_chunk, n, tensor_id, plan, group);
          k += 4;
          continue;
        }
        if (k + 2 <= stored && no_restore(group, k, 2)) {
          accumulate_signs<2>(s, k, first_chunk, n, tensor_id, plan, group);
          k += 2;
          continue;
        }
      }
      const SweepTerm& term = plan.terms[k];
      const A c = group.coefficient[k];
      const A cr = group.restore[k];
      if constexpr (Dist == Distribution::Rademacher) {
        alignas(64) uint32_t words[4][kSpan];
        philox_batch<Avx2, kSpan>(term.key, tensor_id, term.probe, static_cast<uint64_t>(first_chunk), words);
        for (int ch = 0; ch < n; ++ch) {
          for (int q = 0; q < 4; ++q) {
            const uint32_t word = words[q][ch];
            A* sq = s + ch * kCpuChunk + 32 * q;
            if (cr != A(0)) {
              A* rq = r + ch * kCpuChunk + 32 * q;
              for (int b = 0; b < 32; ++b) rq[b] = accumulate_sign(rq[b], cr, sign_mask_of_bit(word, b));
            }
            if constexpr (Adaptive) {
              const A mw = group.m_weight[k], vw = group.v_weight[k];
              A* mq = m + ch * kCpuChunk + 32 * q;
              A* vq = v + ch * kCpuChunk + 32 * q;
              for (int b = 0; b < 32; ++b) {
                const uint32_t mask = sign_mask_of_bit(word, b);
                sq[b] = accumulate_sign(sq[b], c, mask);
                mq[b] = accumulate_sign(mq[b], mw, mask);
                vq[b] = add(vq[b], vw);  // z² = 1
              }
            } else {
              for (int b = 0; b < 32; ++b) sq[b] = accumulate_sign(sq[b], c, sign_mask_of_bit(word, b));
            }
          }
        }
      } else {
        alignas(64) float z[kCpuChunk];
        for (int ch = 0; ch < n; ++ch) {
          gaussian_chunk<Avx2, Avx512>(term.key, tensor_id, term.probe, first_chunk + ch, z);
          A* sc = s + ch * kCpuChunk;
          if (cr != A(0)) {
            A* rc = r + ch * kCpuChunk;
            for (int i = 0; i < kCpuChunk; ++i) rc[i] = accumulate_value(rc[i], cr, z[i]);
          }
          if constexpr (Adaptive) {
            const A mw = group.m_weight[k], vw = group.v_weight[k];
            A* mc = m + ch * kCpuChunk;
            A* vc = v + ch * kCpuChunk;
            for (int i = 0; i < kCpuChunk; ++i) {
              sc[i] = accumulate_value(sc[i], c, z[i]);
              mc[i] = accumulate_value(mc[i], mw, z[i]);
              vc[i] = accumulate_square(vc[i], vw, z[i]);
            }
          } else {
            for (int i = 0; i < kCpuChunk; ++i) sc[i] = accumulate_value(sc[i], c, z[i]);
          }
        }
      }
      ++k;
    }
    const A* restores = stored_restores ? r : nullptr;
    if constexpr (Adaptive) {
      finish_adaptive(out, first_chunk, n, tensor_id, plan, group, s, m, v, restores);
    } else if (fused == 0) {
      // No direction at all (a decay-only sweep, never staged): s is 0.
      for (int i = 0; i < count; ++i) s[i] = A(0);
      finish_linear<true>(out, first_chunk, n, tensor_id, plan, group, s, A(0), nullptr);
    } else {
      const SweepTerm& last = plan.terms[stored];
      const A c = group.coefficient[stored];
      const A cr = group.restore[stored];
      alignas(64) uint32_t words[4][kSpan];
      if constexpr (Dist == Distribution::Rademacher) {
        philox_batch<Avx2, kSpan>(last.key, tensor_id, last.probe, static_cast<uint64_t>(first_chunk), words);
      }
      if (stored > 0) {
        finish_linear<true>(out, first_chunk, n, tensor_id, plan, group, s, c, &words[0][0], &last, staged, restores, cr);
      } else {
        finish_linear<false>(out, first_chunk, n, tensor_id, plan, group, s, c, &words[0][0], &last, staged, restores, cr);
      }
    }
  }

  /// True when none of terms first .. first + count - 1 has a restore coefficient.
  ZOTORCH_CPU_INLINE static bool no_restore(const ResolvedGroup<A>& group, int first, int count) {
    for (int g = 0; g < count; ++g) {
      if (group.restore[first + g] != A(0)) return false;
    }
    return true;
  }

  /// s += c_k·z_k for the G Rademacher terms first_term, first_term + 1, ... in order.
  template <int G>
  ZOTORCH_CPU_INLINE static void accumulate_signs(A* s, int first_term, int64_t first_chunk, int n, uint32_t tensor_id,
                                                  const SweepPlan& plan, const ResolvedGroup<A>& group) {
    alignas(64) uint32_t words[G][4][kSpan];
    A c[G];
    for (int g = 0; g < G; ++g) {
      const SweepTerm& term = plan.terms[first_term + g];
      philox_batch<Avx2, kSpan>(term.key, tensor_id, term.probe, static_cast<uint64_t>(first_chunk), words[g]);
      c[g] = group.coefficient[first_term + g];
    }
    for (int ch = 0; ch < n; ++ch) {
      for (int q = 0; q < 4; ++q) {
        uint32_t word[G];
        for (int g = 0; g < G; ++g) word[g] = words[g][q][ch];
        A* sq = s + ch * kCpuChunk + 32 * q;
        for (int b = 0; b < 32; ++b) {
          A acc = sq[b];
          ZOTORCH_CPU_UNROLL_4
          for (int g = 0; g < G; ++g) acc = accumulate_sign(acc, c[g], sign_mask_of_bit(word[g], b));
          sq[b] = acc;
        }
      }
    }
  }

  /// The one rounding of element i.
  ZOTORCH_CPU_INLINE static void store(S* o, int i, A y, const uint32_t* bits16) {
    if constexpr (Stochastic) {
      o[i] = narrow_stochastic<Storage>(y, bits16[i]);
    } else {
      (void)bits16;
      o[i] = Storage::narrow(y);
    }
  }

  /// The restore rounding of a staged sweep: θ' = round(x + r), to nearest or stochastically with
  /// the restore stream's 16-bit draws, as a separate restore sweep would store it (sweep.h).
  ZOTORCH_CPU_INLINE static A restored(A x, A r, const uint32_t* restore_bits16, int i) {
    if constexpr (Stochastic) {
      return restore_value_stochastic<Storage>(x, r, restore_bits16[i]);
    } else {
      (void)restore_bits16;
      return restore_value<Storage>(x, r);
    }
  }

  /// One chunk of the final pass of a staged sweep: x ← round(x + r), r = stored(i) + cr·z, then
  /// y = keep·x + partial + c·z, rounded. `stored` gives the restore terms accumulated before this
  /// pass (a constant 0 when only the last term restores, so r stays in registers).
  template <bool Partial, class StoredRestore>
  ZOTORCH_CPU_INLINE static void staged_pass(S* o, const A* sc, A c, A cr, const uint32_t* last_words,
                                             const SweepTerm* last, int ch, int64_t first_chunk, uint32_t tensor_id,
                                             const SweepPlan& plan, A keep, const uint32_t* bits16,
                                             StoredRestore stored) {
    alignas(64) uint32_t restore_bits16[Stochastic ? kCpuChunk : 1];
    if constexpr (Stochastic) {
      rounding_chunk<Avx2>(restore_rounding_key(plan.rounding_key), tensor_id, first_chunk + ch, restore_bits16);
    }
    if constexpr (Dist == Distribution::Rademacher) {
      (void)last;
      for (int q = 0; q < 4; ++q) {
        const uint32_t word = last_words[q * kSpan + ch];
        for (int b = 0; b < 32; ++b) {
          const int i = 32 * q + b;
          const uint32_t mask = sign_mask_of_bit(word, b);
          const A partial = Partial ? sc[i] : A(0);
          const A x = restored(Storage::widen(o[i]), accumulate_sign(stored(i), cr, mask), restore_bits16, i);
          store(o, i, linear_update(keep, x, accumulate_sign(partial, c, mask)), bits16);
        }
      }
    } else {
      (void)last_words;
      alignas(64) float z[kCpuChunk];
      gaussian_chunk<Avx2, Avx512>(last->key, tensor_id, last->probe, first_chunk + ch, z);
      for (int i = 0; i < kCpuChunk; ++i) {
        const A partial = Partial ? sc[i] : A(0);
        const A x = restored(Storage::widen(o[i]), accumulate_value(stored(i), cr, z[i]), restore_bits16, i);
        store(o, i, linear_update(keep, x, accumulate_value(partial, c, z[i])), bits16);
      }
    }
  }

  /// The pass over θ of a linear sweep: s (from the array when Partial, else 0) plus the last term
  /// c·z, then y = keep·x + s, then one rounding. `last` is null when there is no term. In a staged
  /// sweep x is first replaced by round(x + r), r = restores[i] (0 when `restores` is null) plus the
  /// last term's cr·z.
  template <bool Partial>
  ZOTORCH_CPU_INLINE static void finish_linear(S* out, int64_t first_chunk, int n, uint32_t tensor_id,
                                               const SweepPlan& plan, const ResolvedGroup<A>& group, const A* s, A c,
                                               const uint32_t* last_words, const SweepTerm* last = nullptr,
                                               bool staged = false, const A* restores = nullptr, A cr = A(0),
                                               const uint32_t* first_words = nullptr, A c0 = A(0)) {
    const A keep = group.keep;
#if defined(ZOTORCH_CPU_AVX512_SWEEP)
    if constexpr (Avx512 && Storage::is_16_bit) {
      if (last != nullptr) {
        if constexpr (std::is_same_v<Storage, BFloat16Storage> && !Stochastic) {
          if (cpu_use_avx512_bf16()) {
            finish16_avx512<Storage, Dist, Stochastic, Partial, kSpan, true>(
                out, first_chunk, n, tensor_id, plan, keep, s, c, last_words, last, staged, restores, cr, first_words, c0);
            return;
          }
        }
        if constexpr (Stochastic && Dist == Distribution::Rademacher && std::is_same_v<Storage, BFloat16Storage>) {
          finish_bf16_pairs_stochastic_avx512<Partial, kSpan>(out, first_chunk, n, tensor_id, plan, keep, s, c, last_words,
                                                         staged, restores, cr, first_words, c0);
        } else {
          finish16_avx512<Storage, Dist, Stochastic, Partial, kSpan>(out, first_chunk, n, tensor_id, plan, keep, s, c,
                                                                     last_words, last, staged, restores, cr, first_words,
                                                                     c0);
        }
        return;
      }
    }
#endif
#if defined(ZOTORCH_CPU_AVX2_DISPATCH)
    if constexpr (Avx2 && !Avx512 && Storage::is_16_bit) {
      if (last != nullptr && cpu_use_avx2_f16c()) {
        finish16_avx2<Storage, Dist, Stochastic, Partial, kSpan>(out, first_chunk, n, tensor_id, plan, keep, s, c,
                                                                 last_words, last, staged, restores, cr, first_words, c0);
        return;
      }
    }
#endif
    for (int ch = 0; ch < n; ++ch) {
      S* o = out + ch * kCpuChunk;
      const A* sc = s + ch * kCpuChunk;
      prefetch_chunk_ahead(o);
      alignas(64) uint32_t bits16[Stochastic ? kCpuChunk : 1];
      if constexpr (Stochastic) rounding_chunk<Avx2>(plan.rounding_key, tensor_id, first_chunk + ch, bits16);
      if (last == nullptr) {
        for (int i = 0; i < kCpuChunk; ++i) store(o, i, linear_update(keep, Storage::widen(o[i]), sc[i]), bits16);
      } else if (staged && restores == nullptr) {
        // Only the last term restores: r = cr·z in registers (0 + cr·z is exact, as below).
        staged_pass<Partial>(o, sc, c, cr, last_words, last, ch, first_chunk, tensor_id, plan, keep, bits16,
                             [](int) { return A(0); });
      } else if (staged) {
        const A* rc = restores + ch * kCpuChunk;
        staged_pass<Partial>(o, sc, c, cr, last_words, last, ch, first_chunk, tensor_id, plan, keep, bits16,
                             [rc](int i) { return rc[i]; });
      } else if constexpr (Dist == Distribution::Rademacher) {
        for (int q = 0; q < 4; ++q) {
          const uint32_t word = last_words[q * kSpan + ch];
          for (int b = 0; b < 32; ++b) {
            const int i = 32 * q + b;
            const A partial = Partial ? sc[i] : A(0);
            store(o, i, linear_update(keep, Storage::widen(o[i]), accumulate_sign(partial, c, sign_mask_of_bit(word, b))),
                  bits16);
          }
        }
      } else {
        alignas(64) float z[kCpuChunk];
        gaussian_chunk<Avx2, Avx512>(last->key, tensor_id, last->probe, first_chunk + ch, z);
        for (int i = 0; i < kCpuChunk; ++i) {
          const A partial = Partial ? sc[i] : A(0);
          store(o, i, linear_update(keep, Storage::widen(o[i]), accumulate_value(partial, c, z[i])), bits16);
        }
      }
    }
  }

  /// The pass over θ of an adaptive sweep: every term is in s, m, v (and r when staged) already.
  ZOTORCH_CPU_INLINE static void finish_adaptive(S* out, int64_t first_chunk, int n, uint32_t tensor_id,
                                                 const SweepPlan& plan, const ResolvedGroup<A>& group, const A* s,
                                                 const A* m, const A* v, const A* restores) {
    const A keep = group.keep, step = group.adaptive_step, stab = group.adaptive_stab;
    for (int ch = 0; ch < n; ++ch) {
      S* o = out + ch * kCpuChunk;
      prefetch_chunk_ahead(o);
      const int base = ch * static_cast<int>(kCpuChunk);
      alignas(64) uint32_t bits16[Stochastic ? kCpuChunk : 1];
      if constexpr (Stochastic) rounding_chunk<Avx2>(plan.rounding_key, tensor_id, first_chunk + ch, bits16);
      alignas(64) A root[kCpuChunk];
      sqrt_lanes(v + base, root, kCpuChunk);
      if (restores != nullptr) {
        alignas(64) uint32_t restore_bits16[Stochastic ? kCpuChunk : 1];
        if constexpr (Stochastic) {
          rounding_chunk<Avx2>(restore_rounding_key(plan.rounding_key), tensor_id, first_chunk + ch, restore_bits16);
        }
        for (int i = 0; i < kCpuChunk; ++i) {
          const A x = restored(Storage::widen(o[i]), restores[base + i], restore_bits16, i);
          store(o, i, adaptive_update_root(keep, x, s[base + i], m[base + i], root[i], step, stab), bits16);
        }
      } else {
        for (int i = 0; i < kCpuChunk; ++i) {
          store(o, i, adaptive_update_root(keep, Storage::widen(o[i]), s[base + i], m[base + i], root[i], step, stab),
                bits16);
        }
      }
    }
  }

  /// Sweeps chunks [chunk_begin, chunk_end) of one tensor of `numel` elements; a partial last chunk
  /// goes through a zero-padded copy so that every chunk takes the same vectorised path.
  ZOTORCH_CPU_INLINE static void run(S* data, int64_t numel, uint32_t tensor_id, const SweepPlan& plan,
                                     const ResolvedGroup<A>& group, int64_t chunk_begin, int64_t chunk_end) {
    const int64_t full_chunks = numel / kCpuChunk;
    const int64_t full_end = std::min(chunk_end, full_chunks);
    for (int64_t chunk = chunk_begin; chunk < full_end; chunk += kSpan) {
      const int n = static_cast<int>(std::min<int64_t>(kSpan, full_end - chunk));
      sweep(data + chunk * kCpuChunk, chunk, n, tensor_id, plan, group);
    }
    if (full_chunks >= chunk_begin && full_chunks < chunk_end) {
      const int64_t start = full_chunks * kCpuChunk;
      const int64_t count = numel - start;
      alignas(64) S tail[kCpuChunk] = {};
      std::copy(data + start, data + numel, tail);
      sweep(tail, full_chunks, 1, tensor_id, plan, group);
      std::copy(tail, tail + count, data + start);
    }
  }
};

/// The portable build of the chunk loop; compiled with the user's flags.
template <class Storage, Distribution Dist, bool Adaptive, bool Stochastic>
ZOTORCH_CPU_NO_CONTRACT void cpu_sweep_span(typename Storage::storage* data, int64_t numel, uint32_t tensor_id, const SweepPlan& plan,
                    const ResolvedGroup<typename Storage::acc>& group, int64_t chunk_begin, int64_t chunk_end) {
  CpuChunks<Storage, Dist, Adaptive, Stochastic, false>::run(data, numel, tensor_id, plan, group, chunk_begin, chunk_end);
}

#if defined(ZOTORCH_CPU_AVX2_DISPATCH)
/// The same loop built for AVX2 (8 lanes instead of SSE2's 4), chosen at run time.
template <class Storage, Distribution Dist, bool Adaptive, bool Stochastic>
__attribute__((target("avx2"))) ZOTORCH_CPU_NO_CONTRACT void cpu_sweep_span_avx2(typename Storage::storage* data, int64_t numel,
                                                         uint32_t tensor_id, const SweepPlan& plan,
                                                         const ResolvedGroup<typename Storage::acc>& group,
                                                         int64_t chunk_begin, int64_t chunk_end) {
  CpuChunks<Storage, Dist, Adaptive, Stochastic, true>::run(data, numel, tensor_id, plan, group, chunk_begin, chunk_end);
}

inline bool cpu_use_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has && cpu_kernels() != CpuKernels::Portable;
}
#endif

#if defined(ZOTORCH_CPU_AVX512_SWEEP)
/// The same loop built for AVX-512 (16 lanes), with contraction off so that it rounds exactly as
/// the other builds do (tests/test_sweep_cpu.cpp compares all of them with the definition).
template <class Storage, Distribution Dist, bool Adaptive, bool Stochastic>
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) ZOTORCH_CPU_NO_CONTRACT void cpu_sweep_span_avx512(
    typename Storage::storage* data, int64_t numel, uint32_t tensor_id, const SweepPlan& plan,
    const ResolvedGroup<typename Storage::acc>& group, int64_t chunk_begin, int64_t chunk_end) {
  CpuChunks<Storage, Dist, Adaptive, Stochastic, true, true>::run(data, numel, tensor_id, plan, group, chunk_begin,
                                                                 chunk_end);
}

inline bool cpu_use_avx512_sweep() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("bmi2");
  return has && (cpu_kernels() == CpuKernels::Best || cpu_kernels() == CpuKernels::Avx512);
}
#endif

template <class Storage, Distribution Dist, bool Adaptive, bool Stochastic>
void cpu_sweep_dispatch(typename Storage::storage* data, int64_t numel, uint32_t tensor_id, const SweepPlan& plan,
                        const ResolvedGroup<typename Storage::acc>& group, int64_t chunk_begin, int64_t chunk_end) {
#if defined(ZOTORCH_CPU_AVX512_SWEEP)
  if (cpu_use_avx512_sweep()) {
    cpu_sweep_span_avx512<Storage, Dist, Adaptive, Stochastic>(data, numel, tensor_id, plan, group, chunk_begin,
                                                               chunk_end);
    return;
  }
#endif
#if defined(ZOTORCH_CPU_AVX2_DISPATCH)
  if (cpu_use_avx2()) {
    cpu_sweep_span_avx2<Storage, Dist, Adaptive, Stochastic>(data, numel, tensor_id, plan, group, chunk_begin, chunk_end);
    return;
  }
#endif
  cpu_sweep_span<Storage, Dist, Adaptive, Stochastic>(data, numel, tensor_id, plan, group, chunk_begin, chunk_end);
}

template <class Storage, Distribution Dist, bool Adaptive>
void cpu_sweep_rounding(typename Storage::storage* data, int64_t numel, uint32_t tensor_id, const SweepPlan& plan,
                        const ResolvedGroup<typename Storage::acc>& group, int64_t chunk_begin, int64_t chunk_end) {
  if (Storage::is_16_bit && plan.stochastic_rounding) {
    cpu_sweep_dispatch<Storage, Dist, Adaptive, Storage::is_16_bit>(data, numel, tensor_id, plan, group, chunk_begin,
                                                                    chunk_end);
  } else {
    cpu_sweep_dispatch<Storage, Dist, Adaptive, false>(data, numel, tensor_id, plan, group, chunk_begin, chunk_end);
  }
}

template <class Storage>
void cpu_sweep_tensor_chunks(const ParamEntry& entry, const SweepPlan& plan,
                             const std::vector<ResolvedGroup<typename Storage::acc>>& groups, int64_t chunk_begin,
                             int64_t chunk_end) {
  auto* data = static_cast<typename Storage::storage*>(entry.tensor.data_ptr());
  const int64_t numel = entry.tensor.numel();
  const auto& group = groups[entry.group];
  const uint32_t id = entry.tensor_id;
  const bool rademacher = plan.distribution == Distribution::Rademacher;
  if (plan.adaptive) {
    rademacher ? cpu_sweep_rounding<Storage, Distribution::Rademacher, true>(data, numel, id, plan, group, chunk_begin,
                                                                            chunk_end)
               : cpu_sweep_rounding<Storage, Distribution::Gaussian, true>(data, numel, id, plan, group, chunk_begin,
                                                                          chunk_end);
  } else {
    rademacher ? cpu_sweep_rounding<Storage, Distribution::Rademacher, false>(data, numel, id, plan, group, chunk_begin,
                                                                             chunk_end)
               : cpu_sweep_rounding<Storage, Distribution::Gaussian, false>(data, numel, id, plan, group, chunk_begin,
                                                                           chunk_end);
  }
}

/// Runs one sweep over every CPU tensor of the table, in one parallel region.
ZOTORCH_CPU_NO_CONTRACT inline void cpu_sweep(const ParamTable& table, const SweepPlan& plan) {
  if (!kCpuSweepParallel && at::get_num_threads() > 1) {
    TORCH_WARN_ONCE("zotorch: this program was compiled without OpenMP while LibTorch's at::parallel_for uses it, so "
                    "CPU sweeps run on 1 thread instead of ", at::get_num_threads(),
                    ". Link the zotorch::zotorch CMake target, or compile and link with -fopenmp "
                    "(docs/performance.md \"Threads\").");
  }
  const auto& entries = table.entries;
  std::vector<int64_t> first_chunk(entries.size() + 1, 0);
  for (size_t t = 0; t < entries.size(); ++t) {
    first_chunk[t + 1] = first_chunk[t] + (entries[t].tensor.numel() + kCpuChunk - 1) / kCpuChunk;
  }
  std::vector<ResolvedGroup<float>> groups_f(plan.num_groups);
  std::vector<ResolvedGroup<double>> groups_d(plan.num_groups);
  for (int g = 0; g < plan.num_groups; ++g) {
    groups_f[g] = resolve_group<float>(plan, g);
    groups_d[g] = resolve_group<double>(plan, g);
  }
  at::parallel_for(0, first_chunk.back(), kCpuGrainChunks, [&](int64_t begin, int64_t end) {
    size_t t = static_cast<size_t>(std::upper_bound(first_chunk.begin(), first_chunk.end(), begin) - first_chunk.begin() - 1);
    for (int64_t chunk = begin; chunk < end; ++t) {
      const int64_t stop = std::min(end, first_chunk[t + 1]);
      if (stop <= chunk) continue;  // empty tensor
      const int64_t local_begin = chunk - first_chunk[t], local_end = stop - first_chunk[t];
      const ParamEntry& entry = entries[t];
      switch (entry.tensor.scalar_type()) {
        case at::kFloat:
          cpu_sweep_tensor_chunks<Float32Storage>(entry, plan, groups_f, local_begin, local_end);
          break;
        case at::kDouble:
          cpu_sweep_tensor_chunks<Float64Storage>(entry, plan, groups_d, local_begin, local_end);
          break;
        case at::kHalf:
          cpu_sweep_tensor_chunks<Float16Storage>(entry, plan, groups_f, local_begin, local_end);
          break;
        case at::kBFloat16:
          cpu_sweep_tensor_chunks<BFloat16Storage>(entry, plan, groups_f, local_begin, local_end);
          break;
        default:
          TORCH_CHECK(false, "zotorch: unsupported dtype ", entry.tensor.scalar_type());
      }
      chunk = stop;
    }
  });
}

}  // namespace ZOTORCH_CPU_KERNELS_ABI

#if defined(ZOTORCH_COMPILED_CPU_KERNELS)
/// cpu_sweep compiled once per program, in share/zotorch/cpu_kernels.cpp (the zotorch::cpu_kernels
/// CMake target defines ZOTORCH_COMPILED_CPU_KERNELS and links that file's object): apply_sweep
/// calls it instead of instantiating the kernels, about a minute of -O3 code generation, in every
/// translation unit (docs/design.md "Packaging"). Defining the macro without linking the object
/// leaves this symbol undefined at link time.
void cpu_sweep_compiled(const ParamTable& table, const SweepPlan& plan);
#endif
}  // namespace detail
}  // namespace zotorch
