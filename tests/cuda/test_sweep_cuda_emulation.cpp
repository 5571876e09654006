// The CUDA kernel body run lane by lane on the CPU (cuda_emulation.h) equals cpu_sweep bit for bit:
// tiling, Rademacher staging rounds, tails, misaligned tensors, group slots and grid strides are
// checked on machines without a GPU; tests/cuda/test_sweep_cuda.cu checks the hardware itself.
#include "cuda_emulation.h"
#include "sweep_cases.h"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

namespace {

using namespace zotorch_test;

std::string describe(const SweepPlan& plan) {
  return std::string(zotorch::to_string(plan.distribution)) + (plan.adaptive ? " adaptive" : " linear") +
         (plan.stochastic_rounding ? " stochastic-rounding" : "") + (zotorch::detail::staged_plan(plan) ? " staged" : "") +
         ", " + std::to_string(plan.num_terms) + " terms";
}

/// Sweeps one copy of the list with cpu_sweep and one with the emulated kernel; both must agree.
void check_list(const std::vector<ParamSpec>& specs, const SweepPlan& plan, int64_t warps, uint64_t seed) {
  std::vector<at::Tensor> expected, actual;
  for (size_t i = 0; i < specs.size(); ++i) {
    const at::Tensor values = make_values(specs[i], seed + i);
    expected.push_back(place(values, specs[i], at::TensorOptions()));
    actual.push_back(place(values, specs[i], at::TensorOptions()));
  }
  zotorch::detail::cpu_sweep(make_table(expected, specs), plan);
  emulate_cuda_sweep(make_table(actual, specs), plan, warps);
  for (size_t i = 0; i < specs.size(); ++i) {
    INFO(describe(plan) << ", " << warps << " warps; tensor " << i << " of " << specs.size() << ": " << specs[i].numel
                        << " x " << specs[i].dtype << (specs[i].misaligned ? " (misaligned)" : ""));
    REQUIRE(first_difference(expected[i], actual[i]).empty());
  }
}

const at::ScalarType kDtypes[] = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
const Distribution kDistributions[] = {Distribution::Rademacher, Distribution::Gaussian};

}  // namespace

TEST_CASE("Emulated CUDA sweep equals the CPU sweep bitwise on single tensors of every dtype", "[cuda][emulation]") {
  // With and without restore terms: staged sweeps round θ + r first (sweep.h).
  uint64_t seed = 11;
  for (const at::ScalarType dtype : kDtypes) {
    const bool half = dtype == at::kHalf || dtype == at::kBFloat16;
    for (const Distribution dist : kDistributions) {
      for (const bool adaptive : {false, true}) {
        for (const bool rounding : {false, true}) {
          if (rounding && !half) continue;
          for (const int64_t numel : {int64_t{1}, int64_t{3}, int64_t{127}, int64_t{129}, int64_t{512}, int64_t{4097}}) {
            for (const bool misaligned : {false, true}) {
              for (const bool restores : {false, true}) {
                ++seed;
                check_list({{numel, dtype, 0, misaligned}}, make_plan(dist, adaptive, rounding, 9, 1, seed, restores), 3,
                           seed);
              }
            }
          }
        }
      }
    }
  }
}

TEST_CASE("Emulated CUDA sweep equals the CPU sweep bitwise on a 300-tensor mixed list", "[cuda][emulation]") {
  // Restore terms on (make_plan's default): staged sweeps with both roundings in every dtype.
  const std::vector<ParamSpec> specs = long_list();
  uint64_t seed = 500;
  for (const Distribution dist : kDistributions) {
    for (const bool adaptive : {false, true}) {
      for (const bool rounding : {false, true}) {
        ++seed;
        check_list(specs, make_plan(dist, adaptive, rounding, 9, 3, seed), 24, seed);
      }
    }
  }
}

TEST_CASE("Emulated CUDA sweep does not depend on the grid size or the number of staging rounds", "[cuda][emulation]") {
  std::vector<ParamSpec> specs = long_list();
  specs.resize(40);
  uint64_t seed = 900;
  for (const Distribution dist : kDistributions) {
    for (const int terms : {0, 1, 8, 17, 64}) {
      for (const int64_t warps : {int64_t{1}, int64_t{7}, int64_t{1000}}) {
        ++seed;
        check_list(specs, make_plan(dist, terms % 2 == 1, true, terms, 3, seed, warps != 7), warps, seed);
      }
    }
  }
}

TEST_CASE("CUDA table layout groups entries by dtype and resolves each used group once", "[cuda][emulation]") {
  using namespace zotorch::detail;
  const std::vector<ParamSpec> specs = {
      {600, at::kHalf, 2, false}, {0, at::kFloat, 0, false}, {1, at::kFloat, 1, false}, {513, at::kFloat, 2, true},
      {1024, at::kHalf, 2, false}};
  std::vector<at::Tensor> tensors;
  for (size_t i = 0; i < specs.size(); ++i) tensors.push_back(place(make_values(specs[i], i), specs[i], at::TensorOptions()));
  const CudaLayout layout = build_cuda_layout(make_table(tensors, specs));
  const CudaKindRange& f32 = layout.kinds[static_cast<int>(CudaStorageKind::Float32)];
  const CudaKindRange& f16 = layout.kinds[static_cast<int>(CudaStorageKind::Float16)];
  REQUIRE(layout.entries.size() == 4);  // the empty tensor is left out
  CHECK(f32.first_entry == 0);
  CHECK(f32.num_entries == 2);
  CHECK(f32.total_tiles == 1 + 2);
  CHECK(f32.num_slots == 2);
  CHECK(f32.slot_group[0] == 1);
  CHECK(f32.slot_group[1] == 2);
  CHECK(layout.entries[1].first_tile == 1);
  CHECK(layout.entries[1].vector_ok == 0);
  CHECK(layout.entries[1].tensor_id == 3);
  CHECK(f16.first_entry == 2);
  CHECK(f16.num_entries == 2);
  CHECK(f16.total_tiles == 2 + 2);
  CHECK(f16.num_slots == 1);
  CHECK(layout.entries[2].vector_ok == 1);
  CHECK(layout.max_group == 2);
  for (int64_t tile = 0; tile < f16.total_tiles; ++tile) {
    CHECK(find_tile_entry(layout.entries.data() + f16.first_entry, f16.num_entries, tile) == (tile < 2 ? 0 : 1));
  }
}

TEST_CASE("CUDA table layout rejects a dtype the kernels cannot update", "[cuda][emulation]") {
  ParamTable table;
  table.entries.push_back(ParamEntry{at::zeros({4}, at::kInt), 7, 0});
  CHECK_THROWS_WITH(zotorch::detail::build_cuda_layout(table),
                    Catch::Contains("parameter 7 has dtype Int") && Catch::Contains("bfloat16"));
}
