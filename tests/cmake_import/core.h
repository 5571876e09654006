// The consumer library's one entry point (see core.cpp).
#pragma once

#include <torch/types.h>

#include <cstdint>

/// Runs `steps` FZOO steps (4 probes each) on a small least-squares problem on `device`; returns the
/// forward passes, or -1 if the parameters did not move.
int64_t core_fzoo_steps(const torch::Device& device, int steps);
