// The distributions a perturbation direction can be drawn from (docs/algorithms.md "Noise").
#pragma once

#include <cstdint>

namespace zotorch {

/// Distribution of each element of a perturbation direction.
enum class Distribution : uint8_t {
  Rademacher,  ///< ±1 with equal probability; integer-only, bit-identical on CPU and CUDA.
  Gaussian,    ///< standard normal (Box-Muller on Philox uniforms, own log/sincos polynomials).
};

inline const char* to_string(Distribution distribution) {
  return distribution == Distribution::Rademacher ? "rademacher" : "gaussian";
}

}  // namespace zotorch
