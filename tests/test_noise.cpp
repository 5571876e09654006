// zotorch::noise and step_key: each element is a pure function of (key, tensor_id, probe, index),
// the distributions have the right moments, and directions under different coordinates are
// uncorrelated. Tolerances are 5 standard errors of the statistic at the sample size used, so a
// correct generator fails with probability below 1e-6 and a wrong moment of 1% is caught.
#include <zotorch/noise.h>

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>

using zotorch::Distribution;

namespace {

constexpr int64_t kSamples = int64_t{1} << 20;

bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.numel() * a.element_size()) == 0;
}

/// Pearson correlation in double.
double correlation(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kDouble).flatten(), y = b.to(at::kDouble).flatten();
  const at::Tensor dx = x - x.mean(), dy = y - y.mean();
  return ((dx * dy).sum() / (dx.pow(2).sum() * dy.pow(2).sum()).sqrt()).item<double>();
}

}  // namespace

TEST_CASE("noise() returns each element as the element functions define it", "[noise]") {
  using namespace zotorch::detail;
  const uint64_t key = 0x9E3779B97F4A7C15ull;
  const at::Tensor r = zotorch::noise(key, 17, 3, {1000}, Distribution::Rademacher);
  const at::Tensor g = zotorch::noise(key, 17, 3, {1000}, Distribution::Gaussian);
  CHECK(r.scalar_type() == at::kFloat);
  CHECK(r.device().is_cpu());
  const float* rp = r.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  for (int64_t j = 0; j < 1000; ++j) {
    const Words4 sign_bits = noise_block(key, 17, 3, static_cast<uint64_t>(j / 128));
    REQUIRE(rp[j] == signed_coefficient(1.0f, rademacher_sign_mask(sign_bits, static_cast<int>(j % 128))));
    const float z = gaussian4(noise_block(key, 17, 3, static_cast<uint64_t>(j / 4))).z[j % 4];
    REQUIRE(std::memcmp(&gp[j], &z, sizeof z) == 0);
  }
}

TEST_CASE("noise() depends on the element index only, not on shape, thread count or dtype", "[noise]") {
  const uint64_t key = zotorch::step_key(42, 7);
  for (Distribution dist : {Distribution::Rademacher, Distribution::Gaussian}) {
    INFO(zotorch::to_string(dist));
    const at::Tensor flat = zotorch::noise(key, 5, 2, {6000}, dist);
    CHECK(bitwise_equal(zotorch::noise(key, 5, 2, {60, 100}, dist).flatten(), flat));
    CHECK(bitwise_equal(zotorch::noise(key, 5, 2, {777}, dist), flat.slice(0, 0, 777)));
    const int threads = at::get_num_threads();
    at::set_num_threads(1);
    const at::Tensor serial = zotorch::noise(key, 5, 2, {6000}, dist);
    at::set_num_threads(threads);
    CHECK(bitwise_equal(serial, flat));
    // fp64 holds the float value exactly; 16-bit types hold it rounded to nearest, as ATen rounds.
    CHECK(bitwise_equal(zotorch::noise(key, 5, 2, {6000}, dist, at::kDouble), flat.to(at::kDouble)));
    CHECK(bitwise_equal(zotorch::noise(key, 5, 2, {6000}, dist, at::kHalf), flat.to(at::kHalf)));
    CHECK(bitwise_equal(zotorch::noise(key, 5, 2, {6000}, dist, at::kBFloat16), flat.to(at::kBFloat16)));
    CHECK(zotorch::noise(key, 5, 2, {0}, dist).numel() == 0);
    CHECK(zotorch::noise(key, 5, 2, {}, dist).dim() == 0);
  }
}

TEST_CASE("Rademacher noise is ±1 with equal probability", "[noise]") {
  const at::Tensor z = zotorch::noise(zotorch::step_key(1, 0), 0, 0, {kSamples}, Distribution::Rademacher);
  CHECK(z.abs().eq(1).all().item<bool>());
  const double plus = z.gt(0).to(at::kDouble).mean().item<double>();
  CHECK(std::abs(plus - 0.5) < 5 * 0.5 / std::sqrt(static_cast<double>(kSamples)));
  // Neighbours within a 128-element block and across blocks are independent.
  CHECK(std::abs(correlation(z.slice(0, 0, kSamples - 1), z.slice(0, 1, kSamples))) <
        5 / std::sqrt(static_cast<double>(kSamples)));
}

TEST_CASE("Gaussian noise has the moments and tails of a standard normal", "[noise]") {
  const at::Tensor z = zotorch::noise(zotorch::step_key(2, 0), 3, 1, {kSamples}, Distribution::Gaussian).to(at::kDouble);
  const double n = static_cast<double>(kSamples);
  const double mean = z.mean().item<double>();
  const double variance = z.pow(2).mean().item<double>() - mean * mean;
  const double skewness = (z - mean).pow(3).mean().item<double>() / std::pow(variance, 1.5);
  const double kurtosis = (z - mean).pow(4).mean().item<double>() / (variance * variance);
  // Standard errors for a normal sample: mean 1/√n, variance √(2/n), skewness √(6/n), kurtosis √(24/n).
  CHECK(std::abs(mean) < 5 / std::sqrt(n));
  CHECK(std::abs(variance - 1) < 5 * std::sqrt(2 / n));
  CHECK(std::abs(skewness) < 5 * std::sqrt(6 / n));
  CHECK(std::abs(kurtosis - 3) < 5 * std::sqrt(24 / n));
  // The CDF at a few points, each a binomial proportion.
  for (double x : {-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0}) {
    const double p = 0.5 * std::erfc(-x / std::sqrt(2.0));
    const double observed = z.lt(x).to(at::kDouble).mean().item<double>();
    INFO("P(z < " << x << ") = " << observed << ", expected " << p);
    CHECK(std::abs(observed - p) < 5 * std::sqrt(p * (1 - p) / n) + 1e-12);
  }
  // Box-Muller's extreme: |z| ≤ sqrt(-2 ln 2^-24) ≈ 5.77, and that far out is reached.
  CHECK(z.abs().max().item<double>() < 5.8);
  CHECK(z.abs().max().item<double>() > 4.5);
  // The two normals of one Box-Muller pair (elements 4b, 4b+1) are uncorrelated, as are the pairs.
  const at::Tensor blocks = z.view({-1, 4});
  for (int other : {1, 2, 3}) {
    CHECK(std::abs(correlation(blocks.select(1, 0), blocks.select(1, other))) < 5 / std::sqrt(n / 4));
  }
  CHECK(std::abs(correlation(blocks.select(1, 0).pow(2), blocks.select(1, 1).pow(2))) < 5 / std::sqrt(n / 4));
}

TEST_CASE("Directions under different keys, tensor ids and probes are uncorrelated", "[noise]") {
  const int64_t n = int64_t{1} << 18;
  const double bound = 5 / std::sqrt(static_cast<double>(n));
  for (Distribution dist : {Distribution::Rademacher, Distribution::Gaussian}) {
    INFO(zotorch::to_string(dist));
    const uint64_t key = zotorch::step_key(9, 100);
    const at::Tensor base = zotorch::noise(key, 4, 0, {n}, dist);
    CHECK(std::abs(correlation(base, zotorch::noise(zotorch::step_key(9, 101), 4, 0, {n}, dist))) < bound);
    CHECK(std::abs(correlation(base, zotorch::noise(zotorch::step_key(10, 100), 4, 0, {n}, dist))) < bound);
    CHECK(std::abs(correlation(base, zotorch::noise(key ^ 1u, 4, 0, {n}, dist))) < bound);  // one key bit
    CHECK(std::abs(correlation(base, zotorch::noise(key, 5, 0, {n}, dist))) < bound);
    CHECK(std::abs(correlation(base, zotorch::noise(key, 4, 1, {n}, dist))) < bound);
    CHECK(std::abs(correlation(base, zotorch::noise(key, 4, 7, {n}, dist))) < bound);
    // The same coordinates give the same direction: the test can tell correlated from not.
    CHECK(correlation(base, zotorch::noise(key, 4, 0, {n}, dist)) == Approx(1.0));
  }
}

TEST_CASE("step_key is a pure function that separates seeds and steps", "[noise]") {
  CHECK(zotorch::step_key(1, 2) == zotorch::step_key(1, 2));
  CHECK(zotorch::step_key(1, 2) != zotorch::step_key(1, 3));
  CHECK(zotorch::step_key(1, 2) != zotorch::step_key(2, 2));
  // Nearby (seed, step) pairs never collide and flip about half the key bits.
  double flipped = 0;
  int count = 0;
  for (uint64_t seed = 0; seed < 32; ++seed) {
    for (uint64_t step = 0; step < 32; ++step) {
      const uint64_t a = zotorch::step_key(seed, step), b = zotorch::step_key(seed, step + 1);
      REQUIRE(a != b);
      flipped += static_cast<double>(__builtin_popcountll(a ^ b));
      ++count;
    }
  }
  CHECK(flipped / count == Approx(32).margin(2));
}

TEST_CASE("noise() refuses coordinates outside the stream with a clear error", "[noise]") {
  CHECK_THROWS_WITH(zotorch::noise(1, -1, 0, {4}, Distribution::Gaussian), Catch::Contains("tensor_id"));
  CHECK_THROWS_WITH(zotorch::noise(1, int64_t{1} << 32, 0, {4}, Distribution::Gaussian), Catch::Contains("tensor_id"));
  CHECK_THROWS_WITH(zotorch::noise(1, 0, -2, {4}, Distribution::Rademacher), Catch::Contains("probe"));
  CHECK_THROWS_WITH(zotorch::noise(1, 0, 0xFFFFFFFFll, {4}, Distribution::Rademacher),
                    Catch::Contains("reserved for stochastic rounding"));
  CHECK_THROWS_WITH(zotorch::noise(1, 0, 0, {4}, Distribution::Rademacher, at::kInt), Catch::Contains("dtype"));
}
