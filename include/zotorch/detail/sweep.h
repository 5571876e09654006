// The one fused operation every optimizer step is made of (docs/design.md "The one fused operation"):
//   θ'[j] ← round( θ[j] + Σ_k restore_k·z_k[j] )                      (only when a term has restore ≠ 0)
//   θ[j]  ← round( keep_g·θ'[j] + Σ_k (keep_g·alpha_k + lr_g·beta_k)·z_k[j]  [ − lr_g·scale·m[j]/(√v[j] + stab) ] )
// i.e. the offsets being removed (restore terms) come off first with a rounding of their own, as a
// separate restore sweep would round them, then keep·(θ' + Σ alpha·z) + Σ lr·beta·z: the decoupled
// decay applies to the unperturbed θ', as the algorithms decay the unperturbed parameters;
// m = Σ_k m_weight_k·z_k and v = Σ_k v_weight_k·z_k² for the adaptive (AdaMeZO) variant.
// Both roundings happen in registers, so the sweep still reads and writes each element once
// (docs/numerics.md "Fused transitions").
// This file holds the plan both backends execute and the element-level arithmetic they share.
#pragma once

#include <zotorch/detail/philox.h>
#include <zotorch/distribution.h>

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

namespace zotorch {
namespace detail {

/// Limits of one sweep; they keep the plan a fixed-size value that fits in CUDA kernel arguments.
constexpr int kMaxTerms = 64;
constexpr int kMaxGroups = 64;

/// One direction z_k = z(key, tensor_id, probe, ·) and its weights in the sweep.
struct SweepTerm {
  uint64_t key = 0;
  uint32_t probe = 0;
  double alpha = 0;     ///< coefficient applied as is, scaled by the group's keep (perturb / restore by ±eps)
  double beta = 0;      ///< coefficient multiplied by the group's lr (the update)
  double m_weight = 0;  ///< adaptive variant: weight in the first moment m
  double v_weight = 0;  ///< adaptive variant: weight in the second moment v
  /// Coefficient of an offset being removed (−alpha of an applied perturbation): summed over the
  /// terms and added to θ first, then rounded to the storage type on its own (staged_plan).
  double restore = 0;
};

/// Per param group scalars: the group's lr and keep = 1 − lr·weight_decay (decoupled decay).
struct GroupScalars {
  double lr = 0;
  double keep = 1;
};

/// Everything one sweep needs besides the tensors. Plain data, copied by value into kernels.
struct SweepPlan {
  Distribution distribution = Distribution::Gaussian;
  int32_t num_terms = 0;
  int32_t num_groups = 1;
  bool adaptive = false;
  double adaptive_scale = 0;  ///< AdaMeZO's `scale`
  double adaptive_stab = 0;   ///< AdaMeZO's `stab`
  bool stochastic_rounding = false;
  uint64_t rounding_key = 0;
  SweepTerm terms[kMaxTerms];
  GroupScalars groups[kMaxGroups];

  SweepPlan& add_term(const SweepTerm& term) {
    TORCH_CHECK(num_terms < kMaxTerms, "zotorch: a sweep holds at most ", kMaxTerms,
                " directions; reduce num_perturbations / num_samples / window");
    terms[num_terms++] = term;
    return *this;
  }
};

/// Whether the plan's restore terms get their own rounding before the rest of the sweep: there are
/// restore terms and something else to do. A plan of restore terms alone is a plain restore sweep
/// and takes the single-rounding path, where restore_k acts as an alpha (resolve_coefficient).
ZOTORCH_HD_INLINE bool staged_plan(const SweepPlan& plan) {
  bool restores = false, rest = plan.adaptive;
  for (int k = 0; k < plan.num_terms; ++k) {
    const SweepTerm& t = plan.terms[k];
    restores = restores || t.restore != 0;
    rest = rest || t.alpha != 0 || t.beta != 0 || t.m_weight != 0 || t.v_weight != 0;
  }
  for (int g = 0; g < plan.num_groups; ++g) rest = rest || plan.groups[g].keep != 1;
  return restores && rest;
}

/// Key of the stochastic-rounding uniforms of the restore rounding in a staged sweep: independent of
/// the final rounding's, as two separate sweeps would draw them (docs/numerics.md "Fused transitions").
ZOTORCH_HD_INLINE uint64_t restore_rounding_key(uint64_t rounding_key) {
  return splitmix64(rounding_key ^ 0x52455354u);
}

/// One trainable tensor as the sweep sees it.
struct ParamEntry {
  at::Tensor tensor;
  uint32_t tensor_id = 0;  ///< index in the optimizer's flattened param list: part of the noise counter
  int32_t group = 0;       ///< index into SweepPlan::groups
};

/// The parameter list of one optimizer, with the per-backend caches derived from it.
struct ParamTable {
  std::vector<ParamEntry> entries;
  /// Opaque state of the CUDA backend (the device-resident copy of this table).
  mutable std::shared_ptr<void> cuda_cache;
};

// ---------------------------------------------------------------------------------------------
// Element types. Each storage type says how it widens to the arithmetic type and rounds back;
// conversions are integer-only so both backends round identically.

struct Float32Storage {
  using storage = float;
  using acc = float;
  static constexpr bool is_16_bit = false;
  ZOTORCH_HD_INLINE static acc widen(storage x) { return x; }
  ZOTORCH_HD_INLINE static storage narrow(acc x) { return x; }
};

struct Float64Storage {
  using storage = double;
  using acc = double;
  static constexpr bool is_16_bit = false;
  ZOTORCH_HD_INLINE static acc widen(storage x) { return x; }
  ZOTORCH_HD_INLINE static storage narrow(acc x) { return x; }
};

struct BFloat16Storage {
  using storage = uint16_t;
  using acc = float;
  static constexpr bool is_16_bit = true;
  ZOTORCH_HD_INLINE static float widen(uint16_t x) { return bit_cast<float>(static_cast<uint32_t>(x) << 16); }
  /// Round to nearest even; NaN stays NaN (quietened). Branch-free, so that CPU loops vectorise.
  ZOTORCH_HD_INLINE static uint16_t narrow(float x) {
    const uint32_t bits = bit_cast<uint32_t>(x);
    const uint32_t quiet_nan = (bits >> 16) | 0x0040u;
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    return static_cast<uint16_t>((bits & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded);
  }
};

struct Float16Storage {
  using storage = uint16_t;
  using acc = float;
  static constexpr bool is_16_bit = true;
  ZOTORCH_HD_INLINE static float widen(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1Fu;
    const uint32_t mantissa = h & 0x3FFu;
    if (exponent == 0x1F) return bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
    if (exponent == 0) {  // zero or subnormal: mantissa·2^-24, exact in float
      const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
      return bit_cast<float>(sign | bit_cast<uint32_t>(magnitude));
    }
    return bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  }
  /// Round to nearest even, with overflow to ±inf and gradual underflow.
  ZOTORCH_HD_INLINE static uint16_t narrow(float x) {
    const uint32_t bits = bit_cast<uint32_t>(x);
    const uint32_t sign = (bits >> 16) & 0x8000u;
    const uint32_t magnitude = bits & 0x7FFFFFFFu;
    if (magnitude >= 0x7F800000u) return static_cast<uint16_t>(sign | (magnitude > 0x7F800000u ? 0x7E00u : 0x7C00u));
    if (magnitude >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // ≥ 65520 rounds to inf
    if (magnitude < 0x38800000u) {                                                // below 2^-14: subnormal
      if (magnitude < 0x33000000u) return static_cast<uint16_t>(sign);            // ≤ 2^-25 rounds to 0
      const uint32_t shift = 126u - (magnitude >> 23);
      const uint32_t full = (magnitude & 0x7FFFFFu) | 0x800000u;
      uint32_t rounded = full >> shift;
      const uint32_t rest = full & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
      rounded += (rest > halfway || (rest == halfway && (rounded & 1u))) ? 1u : 0u;
      return static_cast<uint16_t>(sign | rounded);
    }
    const uint32_t rebased = magnitude - 0x38000000u;
    return static_cast<uint16_t>(sign | ((rebased + 0xFFFu + ((rebased >> 13) & 1u)) >> 13));
  }
};

/// Stochastic rounding of x to a 16-bit type from 16 random bits `bits16` (rounding_bits16 of the
/// reserved rounding probe), so that E[widen(result)] = x (docs/numerics.md "Rounding back to 16
/// bits"). A carry decides: the draw is added below the last bit that is kept and the sum is cut
/// off, so x moves to the next pattern away from zero with probability equal to its distance from
/// the pattern below, in units of their gap.
/// - bfloat16, the upper half of a float32: the 16 bits are added to x's lower half. Exact for every
///   finite x.
/// - float16 normals (|x| ≥ 2^-14): the top 13 bits are added to the 13 bits of x's float32 pattern
///   that float16 drops, and the pattern is cut to float16. Exact.
/// - float16 subnormals (|x| < 2^-14, a grid of 2^-24): the 16 bits are added to |x|·2^40 cut to an
///   integer. Exact for |x| ≥ 2^-17; below that the cut-off bits bias it by less than 2^-16 of a gap.
/// Beyond the largest finite value x goes to ±inf with the probability of its distance; infinities
/// and NaN round as narrow does. Integer operations and selects only, so the CPU loops vectorise.
template <class Storage>
ZOTORCH_HD_INLINE uint16_t narrow_stochastic(float x, uint32_t bits16) {
  const uint32_t bits = bit_cast<uint32_t>(x);
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  const bool finite = magnitude < 0x7F800000u;
  if constexpr (std::is_same_v<Storage, BFloat16Storage>) {
    const uint32_t carried = (bits + bits16) >> 16;  // no overflow for finite x: bits ≤ 0xFF7FFFFF
    return static_cast<uint16_t>(finite ? carried : Storage::narrow(x));
  } else {
    const uint32_t sign = (bits >> 16) & 0x8000u;
    // Normal: rebias the cut pattern from float32's exponent (127) to float16's (15); at most inf.
    const uint32_t normal_pattern = ((magnitude + (bits16 >> 3)) >> 13) - ((127u - 15u) << 10);
    const uint32_t normal = normal_pattern < 0x7C00u ? normal_pattern : 0x7C00u;
    // Subnormal: |x|·2^40 ≤ 2^26 (larger magnitudes clamped first, so the conversion stays in range)
    // is scaled exactly and cut to an integer; a sum of 2^26 or more is the smallest normal, pattern
    // 0x0400, as the carry reaches float16's exponent field.
    const uint32_t small = magnitude < 0x38800000u ? magnitude : 0x38800000u;
    const uint32_t scaled = static_cast<uint32_t>(static_cast<int32_t>(mul(bit_cast<float>(small), 1099511627776.0f)));
    const uint32_t subnormal = (scaled + bits16) >> 16;
    const uint32_t rounded = sign | (magnitude >= 0x38800000u ? normal : subnormal);
    return static_cast<uint16_t>(finite ? rounded : Storage::narrow(x));
  }
}

// ---------------------------------------------------------------------------------------------
// Per-element arithmetic shared by both backends, in the order both must follow.

/// s ← s + c·z for a Rademacher z given as its sign mask (exact product).
template <class A>
ZOTORCH_HD_INLINE A accumulate_sign(A s, A c, uint32_t sign_mask) {
  return add(s, signed_coefficient(c, sign_mask));
}

/// s ← s + c·z for a Gaussian z.
template <class A>
ZOTORCH_HD_INLINE A accumulate_value(A s, A c, float z) {
  return add(s, mul(c, static_cast<A>(z)));
}

/// v ← v + w·z² for a Gaussian z, with z² formed in the arithmetic type (fp64 for fp64 parameters).
template <class A>
ZOTORCH_HD_INLINE A accumulate_square(A v, A w, float z) {
  const A wide = static_cast<A>(z);
  return add(v, mul(w, mul(wide, wide)));
}

/// The restore rounding of a staged sweep: x + r rounded to the storage type (round to nearest), as
/// a restore sweep of its own would store it; exact in registers for float32/float64, where
/// narrow is the identity and the add itself rounds.
template <class Storage>
ZOTORCH_HD_INLINE typename Storage::acc restore_value(typename Storage::acc x, typename Storage::acc r) {
  return Storage::widen(Storage::narrow(add(x, r)));
}
/// The same with stochastic rounding, `bits16` from the restore rounding's own stream.
template <class Storage>
ZOTORCH_HD_INLINE float restore_value_stochastic(float x, float r, uint32_t bits16) {
  return Storage::widen(narrow_stochastic<Storage>(add(x, r), bits16));
}

/// The new value before rounding: keep·x + s, then the adaptive correction when present.
template <class A>
ZOTORCH_HD_INLINE A linear_update(A keep, A x, A s) {
  return add(mul(keep, x), s);
}
ZOTORCH_HD_INLINE float square_root(float x) { return sqrtf(x); }
ZOTORCH_HD_INLINE double square_root(double x) { return sqrt(x); }
/// The adaptive update given root_v = √v: the CPU takes the square roots a vector at a time.
template <class A>
ZOTORCH_HD_INLINE A adaptive_update_root(A keep, A x, A s, A m, A root_v, A step, A stab) {
  return sub(linear_update(keep, x, s), mul(step, m / add(root_v, stab)));
}
template <class A>
ZOTORCH_HD_INLINE A adaptive_update(A keep, A x, A s, A m, A v, A step, A stab) {
  return adaptive_update_root(keep, x, s, m, square_root(v), step, stab);
}

}  // namespace detail
}  // namespace zotorch
