// CPU backend of the fused sweep: at::parallel_for over 128-element chunks of the whole parameter
// list, one read and one write of each element, directions regenerated in registers.
// Chunks never change the result: every element's noise is a pure function of its coordinates.
#pragma once

#include <zotorch/detail/sweep.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace zotorch {
namespace detail {

/// Elements per work item: one Rademacher block, 32 Gaussian blocks.
constexpr int64_t kCpuChunk = 128;
/// Chunks per parallel_for grain: small tensors stay on the calling thread.
constexpr int64_t kCpuGrainChunks = 32;

/// A param group's scalars resolved into the arithmetic type for one sweep.
template <class A>
struct ResolvedGroup {
  A keep;
  A adaptive_step;  ///< lr·scale
  A adaptive_stab;
  A coefficient[kMaxTerms];  ///< alpha_k + lr·beta_k
  A m_weight[kMaxTerms];
  A v_weight[kMaxTerms];
};

/// alpha_k + lr·beta_k of `group`, in double, rounded once to A. The CUDA kernels resolve their
/// coefficients with this same function; mul/add keep nvcc from contracting it into an fma.
template <class A>
ZOTORCH_HD A resolve_coefficient(const SweepPlan& plan, int group, int k) {
  return static_cast<A>(add(plan.terms[k].alpha, mul(plan.groups[group].lr, plan.terms[k].beta)));
}

template <class A>
ResolvedGroup<A> resolve_group(const SweepPlan& plan, int group) {
  const GroupScalars& g = plan.groups[group];
  ResolvedGroup<A> out;
  out.keep = static_cast<A>(g.keep);
  out.adaptive_step = static_cast<A>(g.lr * plan.adaptive_scale);
  out.adaptive_stab = static_cast<A>(plan.adaptive_stab);
  for (int k = 0; k < plan.num_terms; ++k) {
    out.coefficient[k] = resolve_coefficient<A>(plan, group, k);
    out.m_weight[k] = static_cast<A>(plan.terms[k].m_weight);
    out.v_weight[k] = static_cast<A>(plan.terms[k].v_weight);
  }
  return out;
}

/// Fills z[0..127] with the Gaussian direction of one chunk (32 Philox blocks).
inline void gaussian_chunk(uint64_t key, uint32_t tensor_id, uint32_t probe, int64_t chunk, float* z) {
  uint32_t w0[32], w1[32], w2[32], w3[32];
  const uint64_t first_block = static_cast<uint64_t>(chunk) * (kCpuChunk / kGaussianBlock);
  for (int b = 0; b < 32; ++b) {
    const Words4 bits = noise_block(key, tensor_id, probe, first_block + b);
    w0[b] = bits.w[0];
    w1[b] = bits.w[1];
    w2[b] = bits.w[2];
    w3[b] = bits.w[3];
  }
  for (int b = 0; b < 32; ++b) {
    const Normals4 n = gaussian4(Words4{{w0[b], w1[b], w2[b], w3[b]}});
    z[4 * b + 0] = n.z[0];
    z[4 * b + 1] = n.z[1];
    z[4 * b + 2] = n.z[2];
    z[4 * b + 3] = n.z[3];
  }
}

/// Sweeps chunks [chunk_begin, chunk_end) of one tensor.
template <class Storage, Distribution Dist, bool Adaptive>
void cpu_sweep_chunks(typename Storage::storage* data, int64_t numel, uint32_t tensor_id, const SweepPlan& plan,
                      const ResolvedGroup<typename Storage::acc>& group, int64_t chunk_begin, int64_t chunk_end) {
  using A = typename Storage::acc;
  alignas(64) A s[kCpuChunk];
  alignas(64) A m[kCpuChunk];
  alignas(64) A v[kCpuChunk];
  alignas(64) float z[kCpuChunk];
  alignas(64) float uniform[kCpuChunk];
  for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
    const int64_t start = chunk * kCpuChunk;
    const int64_t count = std::min<int64_t>(kCpuChunk, numel - start);
    for (int i = 0; i < kCpuChunk; ++i) s[i] = A(0);
    if (Adaptive) {
      for (int i = 0; i < kCpuChunk; ++i) m[i] = v[i] = A(0);
    }
    for (int k = 0; k < plan.num_terms; ++k) {
      const SweepTerm& term = plan.terms[k];
      const A c = group.coefficient[k];
      if (Dist == Distribution::Rademacher) {
        const Words4 bits = noise_block(term.key, tensor_id, term.probe, static_cast<uint64_t>(chunk));
        for (int q = 0; q < 4; ++q) {
          const uint32_t word = bits.w[q];
          A* sq = s + 32 * q;
          for (int b = 0; b < 32; ++b) sq[b] = accumulate_sign(sq[b], c, ((word >> b) & 1u) << 31);
          if (Adaptive) {
            A* mq = m + 32 * q;
            A* vq = v + 32 * q;
            for (int b = 0; b < 32; ++b) {
              mq[b] = accumulate_sign(mq[b], group.m_weight[k], ((word >> b) & 1u) << 31);
              vq[b] = add(vq[b], group.v_weight[k]);  // z² = 1
            }
          }
        }
      } else {
        gaussian_chunk(term.key, tensor_id, term.probe, chunk, z);
        for (int i = 0; i < kCpuChunk; ++i) s[i] = accumulate_value(s[i], c, z[i]);
        if (Adaptive) {
          for (int i = 0; i < kCpuChunk; ++i) {
            m[i] = accumulate_value(m[i], group.m_weight[k], z[i]);
            v[i] = accumulate_value(v[i], group.v_weight[k], z[i] * z[i]);
          }
        }
      }
    }
    typename Storage::storage* out = data + start;
    if (Storage::is_16_bit && plan.stochastic_rounding) {
      const uint64_t first_block = static_cast<uint64_t>(start) / kRoundingBlock;
      for (int b = 0; b < kCpuChunk / kRoundingBlock; ++b) {
        const Words4 bits = noise_block(plan.rounding_key, tensor_id, kRoundingProbe, first_block + b);
        for (int q = 0; q < 4; ++q) uniform[4 * b + q] = half_open_uniform(bits.w[q]);
      }
    }
    for (int64_t i = 0; i < count; ++i) {
      const A x = Storage::widen(out[i]);
      const A y = Adaptive ? adaptive_update(group.keep, x, s[i], m[i], v[i], group.adaptive_step, group.adaptive_stab)
                           : linear_update(group.keep, x, s[i]);
      if constexpr (Storage::is_16_bit) {
        out[i] = plan.stochastic_rounding ? narrow_stochastic<Storage>(y, uniform[i]) : Storage::narrow(y);
      } else {
        out[i] = Storage::narrow(y);
      }
    }
  }
}

template <class Storage>
void cpu_sweep_tensor_chunks(const ParamEntry& entry, const SweepPlan& plan,
                             const std::vector<ResolvedGroup<typename Storage::acc>>& groups, int64_t chunk_begin,
                             int64_t chunk_end) {
  auto* data = static_cast<typename Storage::storage*>(entry.tensor.data_ptr());
  const int64_t numel = entry.tensor.numel();
  const auto& group = groups[entry.group];
  const bool rademacher = plan.distribution == Distribution::Rademacher;
  if (plan.adaptive) {
    rademacher ? cpu_sweep_chunks<Storage, Distribution::Rademacher, true>(data, numel, entry.tensor_id, plan, group,
                                                                          chunk_begin, chunk_end)
               : cpu_sweep_chunks<Storage, Distribution::Gaussian, true>(data, numel, entry.tensor_id, plan, group,
                                                                        chunk_begin, chunk_end);
  } else {
    rademacher ? cpu_sweep_chunks<Storage, Distribution::Rademacher, false>(data, numel, entry.tensor_id, plan, group,
                                                                           chunk_begin, chunk_end)
               : cpu_sweep_chunks<Storage, Distribution::Gaussian, false>(data, numel, entry.tensor_id, plan, group,
                                                                         chunk_begin, chunk_end);
  }
}

/// Runs one sweep over every CPU tensor of the table, in one parallel region.
inline void cpu_sweep(const ParamTable& table, const SweepPlan& plan) {
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

}  // namespace detail
}  // namespace zotorch
