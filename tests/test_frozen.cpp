// Frozen parameters (requires_grad false), docs/optimizers.md "Frozen parameters", and the
// parameter layout a checkpoint records, docs/optimizers.md "Resume".
#include "optimizer_support.h"

#include <catch2/catch.hpp>

#include <sstream>

using namespace zotorch_test;

namespace {

/// Four tensors; the loss reads only tensors 1 and 3, so whatever happens to 0 and 2 leaves the
/// losses, and hence the updates of 1 and 3, unchanged.
struct HalfFrozen {
  std::vector<torch::Tensor> params;
  std::vector<torch::Tensor> targets;
  int64_t calls = 0;
  explicit HalfFrozen(bool freeze, int64_t seed = 3) {
    const std::vector<std::vector<int64_t>> shapes{{6}, {5, 7}, {9}, {33}};
    for (size_t i = 0; i < shapes.size(); ++i) {
      params.push_back(grid_values(shapes[i], seed + static_cast<int64_t>(i)).requires_grad_(!freeze || i % 2 == 1));
      targets.push_back(grid_values(shapes[i], seed + 50 + static_cast<int64_t>(i), torch::kDouble));
    }
  }
  torch::Tensor operator()() {
    ++calls;
    return (params[1].to(torch::kDouble) - targets[1]).pow(2).sum() + (params[3].to(torch::kDouble) - targets[3]).pow(2).sum();
  }
};

/// What save() wrote before checkpoints recorded the parameter layout.
template <class D, class O, class S>
void save_without_layout(const zotorch::ZerothOrderOptimizer<D, O, S>& opt, torch::serialize::OutputArchive& archive) {
  torch::optim::serialize<S, O>(archive, opt);
}

template <class Optimizer>
std::string saved_bytes(const Optimizer& opt) {
  std::ostringstream out;
  torch::save(opt, out);
  return out.str();
}

}  // namespace

TEMPLATE_TEST_CASE("frozen tensors stay bit-identical while the trainable ones train", "[optimizer][frozen]", zotorch::FZOO,
                   zotorch::MeZO, zotorch::AdaMeZO) {
  HalfFrozen problem(/*freeze=*/true);
  const auto before = snapshot(problem.params);
  TestType opt(problem.params, Make<TestType>::options(1e-3, 1e-3, 5));
  for (int s = 0; s < 6; ++s) opt.step(std::ref(problem));  // past AdaMeZO's warm-up
  CHECK(bitwise_equal({problem.params[0], problem.params[2]}, {before[0], before[2]}));
  CHECK_FALSE(torch::equal(problem.params[1], before[1]));
  CHECK_FALSE(torch::equal(problem.params[3], before[3]));
  CHECK(opt.steps() == 6);
}

TEMPLATE_TEST_CASE("a trainable tensor's update does not depend on which other tensors are frozen, before or after unfreezing",
                   "[optimizer][frozen]", zotorch::FZOO, zotorch::MeZO, zotorch::AdaMeZO) {
  HalfFrozen frozen(/*freeze=*/true), open(/*freeze=*/false);
  TestType a(frozen.params, Make<TestType>::options(1e-3, 1e-3, 9));
  TestType b(open.params, Make<TestType>::options(1e-3, 1e-3, 9));
  const auto initial = snapshot(frozen.params);
  for (int s = 0; s < 4; ++s) {
    a.step(std::ref(frozen));
    b.step(std::ref(open));
    CHECK(bitwise_equal({frozen.params[1], frozen.params[3]}, {open.params[1], open.params[3]}));
  }
  CHECK(torch::equal(frozen.params[0], initial[0]));
  CHECK_FALSE(torch::equal(open.params[0], initial[0]));  // trained in b: it moves by −lr·g·z
  // requires_grad is read at every step: unfreezing tensor 0 shifts nobody's directions.
  frozen.params[0].requires_grad_(true);
  for (int s = 0; s < 4; ++s) {
    a.step(std::ref(frozen));
    b.step(std::ref(open));
    CHECK(bitwise_equal({frozen.params[1], frozen.params[3]}, {open.params[1], open.params[3]}));
  }
  CHECK_FALSE(torch::equal(frozen.params[0], initial[0]));
  CHECK(torch::equal(frozen.params[2], initial[2]));
}

TEMPLATE_TEST_CASE("include_frozen(true) trains frozen tensors exactly like tensors that require grad", "[optimizer][frozen]",
                   zotorch::FZOO, zotorch::MeZO, zotorch::AdaMeZO) {
  HalfFrozen frozen(/*freeze=*/true), open(/*freeze=*/false);
  auto options = Make<TestType>::options(1e-3, 1e-3, 2);
  TestType b(open.params, options);
  options.include_frozen(true);
  TestType a(frozen.params, options);
  for (int s = 0; s < 5; ++s) {
    a.step(std::ref(frozen));
    b.step(std::ref(open));
  }
  CHECK(bitwise_equal(frozen.params, open.params));
}

TEST_CASE("an optimizer with every tensor frozen is refused, at construction and at a step, naming both fixes",
          "[optimizer][frozen][errors]") {
  auto p = torch::zeros({4}), q = torch::zeros({3});
  CHECK_THROWS_WITH(zotorch::MeZO({p, q}, zotorch::MeZOOptions()),
                    Catch::Contains("zotorch::MeZO: none of the 2 parameters is trainable") &&
                        Catch::Contains("requires_grad_(true)") && Catch::Contains("include_frozen(true)"));
  p.requires_grad_(true);
  zotorch::FZOO opt({p, q}, zotorch::FZOOOptions(1e-2));
  p.requires_grad_(false);
  int calls = 0;
  CHECK_THROWS_WITH(opt.step([&] {
    ++calls;
    return p.sum();
  }),
                    Catch::Contains("zotorch::FZOO: none of the 2 parameters is trainable"));
  CHECK(calls == 0);
  CHECK(opt.steps() == 0);
  CHECK(torch::equal(p, torch::zeros({4})));
}

TEMPLATE_TEST_CASE("with the first tensor frozen, save, load and resume stay bit-identical", "[optimizer][frozen][serialize]",
                   zotorch::FZOO, zotorch::MeZO, zotorch::AdaMeZO) {
  const int steps = 8;
  HalfFrozen straight(/*freeze=*/true);
  TestType full(straight.params, Make<TestType>::options(1e-3, 1e-3, 4));
  for (int s = 0; s < steps; ++s) full.step(std::ref(straight));
  // The one global state lives under tensor 0, frozen or not.
  REQUIRE(full.state().size() == 1);
  CHECK(full.state().begin()->first == zotorch::detail::state_key(straight.params[0]));

  HalfFrozen first_half(/*freeze=*/true);
  std::string checkpoint;
  {
    TestType opt(first_half.params, Make<TestType>::options(1e-3, 1e-3, 4));
    for (int s = 0; s < steps / 2; ++s) opt.step(std::ref(first_half));
    checkpoint = saved_bytes(opt);
  }
  HalfFrozen second_half(/*freeze=*/true);
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < second_half.params.size(); ++i) second_half.params[i].copy_(first_half.params[i]);
  }
  TestType resumed(second_half.params, Make<TestType>::options(0.5, 0.25, 999));
  std::istringstream in(checkpoint);
  torch::load(resumed, in);
  CHECK(resumed.steps() == steps / 2);
  for (int s = 0; s < steps / 2; ++s) resumed.step(std::ref(second_half));
  CHECK(bitwise_equal(second_half.params, straight.params));
}

TEMPLATE_TEST_CASE("a checkpoint is refused over another parameter layout, saying what differs", "[optimizer][serialize]",
                   zotorch::FZOO, zotorch::MeZO, zotorch::AdaMeZO) {
  HalfFrozen problem(/*freeze=*/true);
  TestType opt(problem.params, Make<TestType>::options(1e-3, 1e-3, 4));
  opt.step(std::ref(problem));
  const std::string bytes = saved_bytes(opt);
  auto load_into = [&](TestType& target) {
    std::istringstream in(bytes);
    torch::load(target, in);
  };
  SECTION("fewer parameters") {
    HalfFrozen other(/*freeze=*/true);
    TestType target(std::vector<torch::Tensor>{other.params[0], other.params[1], other.params[3]},
                    Make<TestType>::options(1e-3, 1e-3, 4));
    const std::string before = saved_bytes(target);
    CHECK_THROWS_WITH(load_into(target), Catch::Contains("the checkpoint was saved for 4 parameters, this optimizer has 3"));
    CHECK(saved_bytes(target) == before);
  }
  SECTION("another shape") {
    HalfFrozen other(/*freeze=*/true);
    other.params[2] = torch::zeros({3, 3});
    TestType target(other.params, Make<TestType>::options(1e-3, 1e-3, 4));
    CHECK_THROWS_WITH(load_into(target), Catch::Contains("parameter 2 is Float [9] in the checkpoint but Float [3, 3]"));
  }
  SECTION("another dtype") {
    HalfFrozen other(/*freeze=*/true);
    other.params[1] = other.params[1].detach().to(torch::kDouble).requires_grad_(true);
    TestType target(other.params, Make<TestType>::options(1e-3, 1e-3, 4));
    CHECK_THROWS_WITH(load_into(target), Catch::Contains("parameter 1 is Float [5, 7] in the checkpoint but Double [5, 7]"));
  }
  SECTION("another trainable set") {
    HalfFrozen other(/*freeze=*/false);
    TestType target(other.params, Make<TestType>::options(1e-3, 1e-3, 4));
    CHECK_THROWS_WITH(load_into(target), Catch::Contains("the checkpoint trained the parameters {1, 3}") &&
                                             Catch::Contains("this optimizer would train {0, 1, 2, 3}"));
    CHECK(target.steps() == 0);
    // Freezing the same tensors makes it load; unfreezing afterwards is allowed.
    other.params[0].requires_grad_(false);
    other.params[2].requires_grad_(false);
    CHECK_NOTHROW(load_into(target));
    CHECK(target.steps() == 1);
  }
  SECTION("a checkpoint without a layout") {
    torch::serialize::OutputArchive archive;
    save_without_layout(opt, archive);
    std::ostringstream out;
    archive.save_to(out);
    std::istringstream in(out.str());
    torch::serialize::InputArchive old;
    old.load_from(in);
    CHECK_THROWS_WITH(opt.load(old), Catch::Contains("records no parameter layout"));
    CHECK(opt.steps() == 1);
  }
}
