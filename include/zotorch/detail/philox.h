// Stateless Philox4x32-10 and the element-level noise transforms built on it.
// Everything here is __host__ __device__ and free of ATen, so the CPU sweep and the CUDA
// kernels call the very same functions and cannot drift apart (docs/design.md "The one fused operation").
#pragma once

#include <cstdint>
#include <cmath>
#include <cstring>

#if defined(__CUDACC__)
#define ZOTORCH_HD __host__ __device__ __forceinline__
#else
#define ZOTORCH_HD inline
#endif

// The element functions are always inlined on the host too: the CPU sweep's loops vectorise only
// with their bodies inside, and GCC declines to inline ordinary inline functions into the sweep's
// entry points, which carry target(...) and optimize("fp-contract=off") attributes.
#if defined(__CUDACC__)
#define ZOTORCH_HD_INLINE __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define ZOTORCH_HD_INLINE inline __attribute__((always_inline))
#else
#define ZOTORCH_HD_INLINE inline
#endif
#if defined(__GNUC__) || defined(__clang__)
#define ZOTORCH_HOST_INLINE inline __attribute__((always_inline))
#else
#define ZOTORCH_HOST_INLINE inline
#endif

// Full unrolling of short fixed loops, spelled for each compiler (GCC warns on a bare
// `#pragma unroll` under -Wall).
#if defined(__CUDACC__) || defined(__clang__)
#define ZOTORCH_PHILOX_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define ZOTORCH_PHILOX_UNROLL _Pragma("GCC unroll 16")
#else
#define ZOTORCH_PHILOX_UNROLL
#endif

namespace zotorch {
namespace detail {

/// Four 32-bit words: one Philox counter or one Philox output block.
struct Words4 {
  uint32_t w[4];
};

/// One Philox4x32-10 evaluation: 128 random bits from (counter, key). Random123's constants.
ZOTORCH_HD_INLINE Words4 philox4x32_10(Words4 ctr, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
ZOTORCH_PHILOX_UNROLL
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * ctr.w[0];
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * ctr.w[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr = Words4{{hi1 ^ ctr.w[1] ^ key0, lo1, hi0 ^ ctr.w[3] ^ key1, lo0}};
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return ctr;
}

/// The noise stream's coordinates (docs/algorithms.md "Noise"): counter = {block_lo, block_hi, tensor_id, probe}.
ZOTORCH_HD_INLINE Words4 noise_block(uint64_t key, uint32_t tensor_id, uint32_t probe, uint64_t block) {
  return philox4x32_10(Words4{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), tensor_id, probe}},
                       static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
}

/// Elements per Philox call: 128 signs for Rademacher, 4 normals for Gaussian, 8 16-bit rounding
/// draws for stochastic rounding.
constexpr int64_t kRademacherBlock = 128;
constexpr int64_t kGaussianBlock = 4;
constexpr int64_t kRoundingBlock = 8;
/// Probe index reserved for stochastic rounding; no method uses it for directions.
constexpr uint32_t kRoundingProbe = 0xFFFFFFFFu;

/// SplitMix64 finaliser: a bijective 64-bit mix, used to derive keys from (seed, counter).
ZOTORCH_HD_INLINE uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

template <typename To, typename From>
ZOTORCH_HD_INLINE To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To to;
  memcpy(&to, &from, sizeof(To));
  return to;
}

// Non-contracted arithmetic. nvcc fuses a*b+c into an fma by default and x86 host code (without
// -mfma) never does; these keep the rounding sequence identical on both sides.
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub(double a, double b) { return __dsub_rn(a, b); }
#else
ZOTORCH_HOST_INLINE float mul(float a, float b) { return a * b; }
ZOTORCH_HOST_INLINE float add(float a, float b) { return a + b; }
ZOTORCH_HOST_INLINE float sub(float a, float b) { return a - b; }
ZOTORCH_HOST_INLINE double mul(double a, double b) { return a * b; }
ZOTORCH_HOST_INLINE double add(double a, double b) { return a + b; }
ZOTORCH_HOST_INLINE double sub(double a, double b) { return a - b; }
#endif

/// Rademacher sign of element `i` (0..127) of a block: +1 when its bit is 0, -1 when it is 1,
/// expressed as the sign-bit mask to XOR into a coefficient (integer-only, hence bit-identical).
ZOTORCH_HD_INLINE uint32_t rademacher_sign_mask(const Words4& bits, int i) {
  return ((bits.w[(i >> 5) & 3] >> (i & 31)) & 1u) << 31;
}

/// coefficient * z for z = ±1, exactly.
ZOTORCH_HD_INLINE float signed_coefficient(float coefficient, uint32_t sign_mask) {
  return bit_cast<float>(bit_cast<uint32_t>(coefficient) ^ sign_mask);
}
ZOTORCH_HD_INLINE double signed_coefficient(double coefficient, uint32_t sign_mask) {
  return bit_cast<double>(bit_cast<uint64_t>(coefficient) ^ (static_cast<uint64_t>(sign_mask) << 32));
}

/// A uniform in (0, 1) on the grid (2k+1)·2^-24 from the top 23 bits of a word; exact in float.
ZOTORCH_HD_INLINE float open_uniform(uint32_t word) {
  // Through int32 (the value is below 2^24): SSE2/AVX2 convert signed integers only.
  return static_cast<float>(static_cast<int32_t>(((word >> 9) << 1) | 1u)) * 5.9604644775390625e-8f;  // 2^-24
}

/// The 16 random bits that stochastic rounding gives element i of a rounding block (i < 8): the low
/// half of word i/2 for even i, the high half for odd i. Read as little-endian 16-bit values, the
/// block's four words are the eight draws in element order (docs/numerics.md "The noise stream").
ZOTORCH_HD_INLINE uint32_t rounding_bits16(const uint32_t (&words)[4], int i) {
  return (words[i >> 1] >> ((i & 1) * 16)) & 0xFFFFu;
}

/// The coefficients of log_unit's and sincos_turns's polynomials, named once so that the CPU's
/// hand-vectorised Gaussian (cpu_sweep.h) evaluates the very same ones.
struct GaussianPoly {
  // ln m = 2s·(1 + s²·(1/3 + s²·(1/5 + s²·(1/7 + s²/9)))), s = (m−1)/(m+1).
  static constexpr float kLog2 = 0.333333343f, kLog4 = 0.2f, kLog6 = 0.142857149f, kLog8 = 0.111111112f;
  // ln 2 split so that e·ln2_hi is exact for |e| < 2^8.
  static constexpr float kLn2Hi = 0.693145752f, kLn2Lo = 1.42860677e-6f;
  // (−1)^i (2π)^(2i+1)/(2i+1)!, i = 0..5, and (−1)^i (2π)^(2i)/(2i)!, i = 1..6.
  static constexpr float kSin1 = 6.28318531f, kSin3 = -41.3417022f, kSin5 = 81.6052493f, kSin7 = -76.7058598f,
                         kSin9 = 42.0586939f, kSin11 = -15.0946426f;
  static constexpr float kCos2 = -19.7392088f, kCos4 = 64.9393940f, kCos6 = -85.4568172f, kCos8 = 60.2446414f,
                         kCos10 = -26.4262568f, kCos12 = 7.90353637f;
};

/// Natural log for u in (0, 1], from +, *, / only (no libm), so CPU and CUDA agree bit for bit.
/// u = m·2^e with m in [√½, √2); ln m = 2·atanh(s), s = (m−1)/(m+1), |s| ≤ 0.1716.
ZOTORCH_HD_INLINE float log_unit(float u) {
  const uint32_t bits = bit_cast<uint32_t>(u);
  int32_t exponent = static_cast<int32_t>((bits >> 23) & 0xFFu) - 127;
  // m in [1, 2), halved when above 1.41421356f (0x3FB504F3), in integers: positive floats order as
  // their bits, and m·½ is m with its exponent field lowered by one. Same values as float compare
  // and multiply, but no floating-point operation under a condition, which would block the CPU's
  // if-conversion and with it vectorisation.
  const uint32_t m_bits = (bits & 0x007FFFFFu) | 0x3F800000u;
  const bool above = m_bits > 0x3FB504F3u;
  const float m = bit_cast<float>(above ? m_bits - 0x00800000u : m_bits);
  exponent += above ? 1 : 0;
  const float f = sub(m, 1.0f);
  const float s = f / add(2.0f, f);
  const float s2 = mul(s, s);
  float poly = add(GaussianPoly::kLog6, mul(s2, GaussianPoly::kLog8));  // 1/7 + s²/9
  poly = add(GaussianPoly::kLog4, mul(s2, poly));
  poly = add(GaussianPoly::kLog2, mul(s2, poly));
  const float log_m = mul(mul(2.0f, s), add(1.0f, mul(s2, poly)));
  const float e = static_cast<float>(exponent);
  return add(mul(e, GaussianPoly::kLn2Hi), add(log_m, mul(e, GaussianPoly::kLn2Lo)));
}

/// cos(2πt) and sin(2πt) for t in (0, 1): exact quadrant reduction on t, then Taylor
/// polynomials on |2πr| ≤ π/4 (truncation error < 1e-9).
struct SinCos {
  float cos, sin;
};
ZOTORCH_HD_INLINE SinCos sincos_turns(float t) {
  const float quarter_turns = static_cast<float>(static_cast<int32_t>(add(mul(t, 4.0f), 0.5f)));
  const uint32_t quadrant = static_cast<uint32_t>(static_cast<int32_t>(quarter_turns)) & 3u;
  const float r = sub(t, mul(quarter_turns, 0.25f));  // exact: both on the 2^-24 grid, |r| ≤ 1/8
  const float r2 = mul(r, r);
  // sin(2πr) = Σ (-1)^i (2π)^(2i+1)/(2i+1)! · r^(2i+1), i = 0..5
  float sp = add(GaussianPoly::kSin9, mul(r2, GaussianPoly::kSin11));
  sp = add(GaussianPoly::kSin7, mul(r2, sp));
  sp = add(GaussianPoly::kSin5, mul(r2, sp));
  sp = add(GaussianPoly::kSin3, mul(r2, sp));
  sp = add(GaussianPoly::kSin1, mul(r2, sp));
  const float sin_r = mul(r, sp);
  // cos(2πr) = Σ (-1)^i (2π)^(2i)/(2i)! · r^(2i), i = 0..6
  float cp = add(GaussianPoly::kCos10, mul(r2, GaussianPoly::kCos12));
  cp = add(GaussianPoly::kCos8, mul(r2, cp));
  cp = add(GaussianPoly::kCos6, mul(r2, cp));
  cp = add(GaussianPoly::kCos4, mul(r2, cp));
  cp = add(GaussianPoly::kCos2, mul(r2, cp));
  const float cos_r = add(1.0f, mul(r2, cp));
  // Quadrant q: cos(2πt) = cos_r, −sin_r, −cos_r, sin_r and sin(2πt) = sin_r, cos_r, −sin_r, −cos_r.
  // A select of computed values and a sign-bit flip (exactly a negation), so that it vectorises.
  const bool odd = (quadrant & 1u) != 0u;
  SinCos out;
  out.cos = bit_cast<float>(bit_cast<uint32_t>(odd ? sin_r : cos_r) ^ (((quadrant + 1u) & 2u) << 30));
  out.sin = bit_cast<float>(bit_cast<uint32_t>(odd ? cos_r : sin_r) ^ ((quadrant & 2u) << 30));
  return out;
}

/// Four standard normals from one Philox block (two Box-Muller pairs).
struct Normals4 {
  float z[4];
};
ZOTORCH_HD_INLINE Normals4 gaussian4(const Words4& bits) {
  Normals4 out;
ZOTORCH_PHILOX_UNROLL
  for (int pair = 0; pair < 2; ++pair) {
    const float radius = sqrtf(mul(-2.0f, log_unit(open_uniform(bits.w[2 * pair]))));
    const SinCos sc = sincos_turns(open_uniform(bits.w[2 * pair + 1]));
    out.z[2 * pair] = mul(radius, sc.cos);
    out.z[2 * pair + 1] = mul(radius, sc.sin);
  }
  return out;
}

}  // namespace detail
}  // namespace zotorch
