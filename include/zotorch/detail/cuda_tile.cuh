// The sweep functor of the CUDA backend: what one warp does to one 512-element tile, written as
// per-lane phases separated by warp barriers, so that the kernel runs them on 32 lanes at once and
// tests/cuda/cuda_emulation.h runs the very same code lane after lane on the CPU (host-compilable).
#pragma once

#include <zotorch/detail/cpu_sweep.h>
#include <zotorch/detail/cuda_layout.cuh>

#include <cstring>
#include <type_traits>

// Host compilers would warn about (and ignore) `#pragma unroll`; the emulation needs no unrolling.
#if defined(__CUDACC__)
#define ZOTORCH_UNROLL _Pragma("unroll")
#else
#define ZOTORCH_UNROLL
#endif

namespace zotorch {
namespace detail {

/// Where the per-group scalars of one launch sit in shared memory (units of the arithmetic type):
/// [m_weight[T], v_weight[T]] when adaptive, [restore[T]] when staged (staged_plan), then per slot
/// [keep, lr·scale, stab, coefficient[T]].
struct ResolvedLayout {
  int terms = 0;
  int slots = 0;
  bool adaptive = false;
  bool staged = false;
  ZOTORCH_HD int weights() const { return adaptive ? 2 * terms : 0; }
  ZOTORCH_HD int restores() const { return staged ? terms : 0; }
  ZOTORCH_HD int stride() const { return 3 + terms; }
  ZOTORCH_HD int size() const { return weights() + restores() + slots * stride(); }
  ZOTORCH_HD int slot_offset(int slot) const { return weights() + restores() + slot * stride(); }
};

/// Value `i` of the resolved scalars, exactly as resolve_group<A> computes it for the CPU.
template <class A>
ZOTORCH_HD A resolved_value(const SweepPlan& plan, const uint8_t* slot_group, const ResolvedLayout& layout, int i) {
  if (i < layout.weights()) {
    return i < layout.terms ? static_cast<A>(plan.terms[i].m_weight) : static_cast<A>(plan.terms[i - layout.terms].v_weight);
  }
  if (i < layout.weights() + layout.restores()) return resolve_restore<A>(plan, i - layout.weights(), true);
  const int slot = (i - layout.weights() - layout.restores()) / layout.stride();
  const int field = (i - layout.weights() - layout.restores()) % layout.stride();
  const int group = slot_group[slot];
  const GroupScalars& g = plan.groups[group];
  switch (field) {
    case 0: return static_cast<A>(g.keep);
    case 1: return static_cast<A>(mul(g.lr, plan.adaptive_scale));  // resolve_group: lr·scale, one product
    case 2: return static_cast<A>(plan.adaptive_stab);
    default: return resolve_coefficient<A>(plan, group, field - 3, layout.staged);
  }
}

/// One tile of one tensor, with the scalars of its group.
template <class Storage>
struct TileContext {
  using S = typename Storage::storage;
  using A = typename Storage::acc;
  S* data = nullptr;
  int64_t numel = 0;
  int64_t start = 0;  ///< first element of the tile in the tensor (a multiple of kTileElements)
  uint32_t tensor_id = 0;
  bool vector_ok = false;
  int terms = 0;
  bool staged = false;  ///< staged_plan: restore terms summed into r, θ' = round(θ + r) first
  A keep = A(1), step = A(0), stab = A(0);
  const A* coefficient = nullptr;
  const A* restore = nullptr;  ///< restore_k, when staged
  const A* m_weight = nullptr;
  const A* v_weight = nullptr;
};

template <class Storage>
ZOTORCH_HD TileContext<Storage> make_tile_context(const CudaTableEntry& entry, int64_t tile, int terms,
                                                  const ResolvedLayout& layout, const typename Storage::acc* resolved) {
  TileContext<Storage> ctx;
  ctx.data = static_cast<typename Storage::storage*>(entry.data);
  ctx.numel = entry.numel;
  ctx.start = (tile - entry.first_tile) * kTileElements;
  ctx.tensor_id = entry.tensor_id;
  ctx.vector_ok = entry.vector_ok != 0;
  ctx.terms = terms;
  const auto* slot = resolved + layout.slot_offset(entry.slot);
  ctx.keep = slot[0];
  ctx.step = slot[1];
  ctx.stab = slot[2];
  ctx.coefficient = slot + 3;
  ctx.m_weight = resolved;
  ctx.v_weight = resolved + terms;
  ctx.staged = layout.staged;
  ctx.restore = resolved + layout.weights();
  return ctx;
}

/// `count` storage values at `src` (16-byte aligned) into registers: 128-bit loads on the device.
template <class S, int kCount>
ZOTORCH_HD void load_vector(const S* src, S* dst) {
  static_assert(kCount * sizeof(S) % 16 == 0, "whole 16-byte vectors only");
#if defined(__CUDA_ARCH__)
ZOTORCH_UNROLL
  for (int v = 0; v < static_cast<int>(kCount * sizeof(S) / 16); ++v) {
    const uint4 bits = reinterpret_cast<const uint4*>(src)[v];
    memcpy(dst + v * (16 / sizeof(S)), &bits, 16);
  }
#else
  // The emulation: a misaligned 128-bit access would fault on the device.
  TORCH_INTERNAL_ASSERT(reinterpret_cast<uintptr_t>(src) % 16 == 0, "vector load from a misaligned address");
  memcpy(dst, src, kCount * sizeof(S));
#endif
}

template <class S, int kCount>
ZOTORCH_HD void store_vector(const S* src, S* dst) {
  static_assert(kCount * sizeof(S) % 16 == 0, "whole 16-byte vectors only");
#if defined(__CUDA_ARCH__)
  // nvcc 13 splits a plain uint4 assignment here into 32-bit stores (and __stwb becomes a "strong"
  // store), so the 128-bit store is spelled out.
  uint32_t words[kCount * sizeof(S) / 4];
  memcpy(words, src, sizeof(words));
ZOTORCH_UNROLL
  for (int v = 0; v < static_cast<int>(kCount * sizeof(S) / 16); ++v) {
    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(reinterpret_cast<uint4*>(dst) + v), "r"(words[4 * v]),
                 "r"(words[4 * v + 1]), "r"(words[4 * v + 2]), "r"(words[4 * v + 3])
                 : "memory");
  }
#else
  TORCH_INTERNAL_ASSERT(reinterpret_cast<uintptr_t>(dst) % 16 == 0, "vector store to a misaligned address");
  memcpy(dst, src, kCount * sizeof(S));
#endif
}

/// The registers of one lane for one pass of a tile, and the phases that fill them. Element order
/// per lane and term order per element are those of cpu_sweep_chunks: s, m, v (and r, restore terms
/// only, when staged) start at 0 and take terms 0, 1, 2, ... in turn, then x ← round(x + r) when
/// staged, then y = update(x), then one rounding. Each element is computed from its own value, its
/// own draws and these sums only, so neither how the tile is cut into passes nor whether r is summed
/// in a run of its own (kRestoreFirst) changes a bit.
template <class Storage, Distribution Dist, bool Adaptive>
struct TileLane {
  using S = typename Storage::storage;
  using A = typename Storage::acc;
  using Context = TileContext<Storage>;
  /// Elements per lane per step: 16 bytes of 32- and 16-bit types; 32 bytes of doubles, so a
  /// lane still owns whole 4-element Gaussian and rounding blocks.
  static constexpr int kVec = sizeof(S) == 2 ? 8 : 4;
  static constexpr int kSteps = kLaneElements / kVec;  ///< steps per tile
  /// Steps per pass over a tile. A warp sweeps its tile in passes of kPassSteps × 32 × kVec
  /// elements, so a lane holds only one pass's values, sums and moments in registers: 8 elements of
  /// any type, or the whole tile's 16 for the Rademacher adaptive kernels, which fit 2 blocks per SM
  /// either way and so keep more loads in flight. docs/cuda.md "Occupancy" has the register counts
  /// and bytes in flight of each choice.
  static constexpr int kPassSteps = (Dist == Distribution::Rademacher && Adaptive ? kLaneElements : 8) / kVec;
  static constexpr int kPasses = kSteps / kPassSteps;
  static constexpr int kPassElements = kPassSteps * kVec;  ///< per lane
  /// Rademacher blocks per pass, and the terms whose blocks the warp draws per staging round: one
  /// Philox call per lane per round.
  static constexpr int kPassBlocks = static_cast<int>(kPassElements * kWarpLanes / kRademacherBlock);
  static constexpr int kStagedTerms = kWarpLanes / kPassBlocks;
  static constexpr int kMoments = Adaptive ? kPassElements : 1;
  /// Rounding blocks (8 elements, one Philox call) per step; 1 for doubles, which never draw.
  static constexpr int kRoundingDraws = kVec >= kRoundingBlock ? static_cast<int>(kVec / kRoundingBlock) : 1;
  /// Rademacher applies a staged plan's restore terms in a run over the terms of their own, before
  /// the rest, so that r and s are never live together (docs/cuda.md "Occupancy"); Gaussian keeps
  /// one run, since drawing its normals twice costs more than the registers.
  static constexpr bool kRestoreFirst = Dist == Distribution::Rademacher;
  static_assert(kSteps % kPassSteps == 0 && kPassElements * kWarpLanes % kRademacherBlock == 0 &&
                    kWarpLanes % kPassBlocks == 0,
                "a pass must cover whole Rademacher blocks, and a staging round whole terms");

  S x[kPassElements];
  A s[kPassElements];
  A r[kPassElements];
  A m[kMoments];
  A v[kMoments];

  /// First element (within the tile) of the lane's step j. Lanes own consecutive pieces, so each
  /// warp-wide access covers 512 (fp64: 1024) contiguous bytes.
  ZOTORCH_HD static int step_offset(int lane, int j) { return (j * kWarpLanes + lane) * kVec; }
  /// First element (within the tile) of pass p.
  ZOTORCH_HD static int pass_offset(int pass) { return pass * kPassSteps * kWarpLanes * kVec; }

  ZOTORCH_HD void load(const Context& ctx, int lane, int pass) {
ZOTORCH_UNROLL
    for (int j = 0; j < kPassSteps; ++j) {
      const int64_t first = ctx.start + step_offset(lane, pass * kPassSteps + j);
      S* xs = x + j * kVec;
      if (ctx.vector_ok && first + kVec <= ctx.numel) {
        load_vector<S, kVec>(ctx.data + first, xs);
      } else {
ZOTORCH_UNROLL
        for (int i = 0; i < kVec; ++i) xs[i] = first + i < ctx.numel ? ctx.data[first + i] : S(0);
      }
    }
ZOTORCH_UNROLL
    for (int i = 0; i < kPassElements; ++i) s[i] = r[i] = A(0);
ZOTORCH_UNROLL
    for (int i = 0; i < kMoments; ++i) m[i] = v[i] = A(0);
  }

  /// Rademacher, pass p, round r: lane l draws block (l mod kPassBlocks) of the pass for term
  /// kStagedTerms·r + l / kPassBlocks; in the restore run (kRestoreTerms) only for terms that restore.
  template <bool kRestoreTerms>
  ZOTORCH_HD static void stage(const Context& ctx, const SweepPlan& plan, int lane, int pass, int round,
                               Words4* staged) {
    const int k = round * kStagedTerms + lane / kPassBlocks;
    if (k < ctx.terms && !(kRestoreTerms && ctx.restore[k] == A(0))) {
      const SweepTerm& term = plan.terms[k];
      const uint64_t block = static_cast<uint64_t>((ctx.start + pass_offset(pass)) / kRademacherBlock) +
                             static_cast<uint64_t>(lane % kPassBlocks);
      staged[lane] = noise_block(term.key, ctx.tensor_id, term.probe, block);
    }
  }

  /// Rademacher, round r of a pass: adds the staged terms of round r to the lane's elements: their
  /// restore parts to r (kRestoreFirst's first run over the terms), or the rest to s, m and v.
  template <bool kRestoreTerms>
  ZOTORCH_HD void accumulate_staged(const Context& ctx, int lane, int round, const Words4* staged) {
    const int first = round * kStagedTerms;
    const int count = ctx.terms - first < kStagedTerms ? ctx.terms - first : kStagedTerms;
    for (int t = 0; t < count; ++t) {
      const A c = kRestoreTerms ? ctx.restore[first + t] : ctx.coefficient[first + t];
      // As on the CPU, r takes only the terms that restore; stage<true> drew no others.
      if (kRestoreTerms && c == A(0)) continue;
      A m_weight = A(0), v_weight = A(0);
      if constexpr (Adaptive && !kRestoreTerms) {
        m_weight = ctx.m_weight[first + t];
        v_weight = ctx.v_weight[first + t];
      }
ZOTORCH_UNROLL
      for (int j = 0; j < kPassSteps; ++j) {
        // Offset within the pass; kVec divides 32, so the lane's bits sit in one word.
        const int offset = step_offset(lane, j);
        const uint32_t word = staged[t * kPassBlocks + offset / kRademacherBlock].w[(offset >> 5) & 3] >> (offset & 31);
ZOTORCH_UNROLL
        for (int i = 0; i < kVec; ++i) {
          const uint32_t sign_mask = ((word >> i) & 1u) << 31;
          const int e = j * kVec + i;
          if constexpr (kRestoreTerms) {
            r[e] = accumulate_sign(r[e], c, sign_mask);
          } else {
            s[e] = accumulate_sign(s[e], c, sign_mask);
          }
          if constexpr (Adaptive && !kRestoreTerms) {
            m[e] = accumulate_sign(m[e], m_weight, sign_mask);
            v[e] = add(v[e], v_weight);  // z² = 1
          }
        }
      }
    }
  }

  /// Gaussian: every lane draws its own 4-element blocks, all terms in order.
  ZOTORCH_HD void accumulate_normals(const Context& ctx, const SweepPlan& plan, int lane, int pass) {
    for (int k = 0; k < ctx.terms; ++k) {
      const SweepTerm& term = plan.terms[k];
      const A c = ctx.coefficient[k];
      const A cr = ctx.staged ? ctx.restore[k] : A(0);  // warp-uniform
      A m_weight = A(0), v_weight = A(0);
      if constexpr (Adaptive) {
        m_weight = ctx.m_weight[k];
        v_weight = ctx.v_weight[k];
      }
ZOTORCH_UNROLL
      for (int j = 0; j < kPassSteps; ++j) {
ZOTORCH_UNROLL
        for (int b = 0; b < kVec / static_cast<int>(kGaussianBlock); ++b) {
          const int64_t first = ctx.start + step_offset(lane, pass * kPassSteps + j) + b * kGaussianBlock;
          const Normals4 z = gaussian4(noise_block(term.key, ctx.tensor_id, term.probe, static_cast<uint64_t>(first / kGaussianBlock)));
ZOTORCH_UNROLL
          for (int q = 0; q < 4; ++q) {
            const int e = j * kVec + b * static_cast<int>(kGaussianBlock) + q;
            s[e] = accumulate_value(s[e], c, z.z[q]);
            if (cr != A(0)) r[e] = accumulate_value(r[e], cr, z.z[q]);
            if constexpr (Adaptive) {
              m[e] = accumulate_value(m[e], m_weight, z.z[q]);
              v[e] = accumulate_square(v[e], v_weight, z.z[q]);
            }
          }
        }
      }
    }
  }

  /// The stochastic-rounding draws of the kVec elements from `first` (a multiple of kRoundingBlock):
  /// block first/8 + b, whose rounding_bits16(w, i) are element 8b + i's.
  ZOTORCH_HD static void rounding_draws(uint64_t key, uint32_t tensor_id, int64_t first, Words4* bits) {
ZOTORCH_UNROLL
    for (int b = 0; b < kRoundingDraws; ++b) {
      const uint64_t block = static_cast<uint64_t>(first / kRoundingBlock) + static_cast<uint64_t>(b);
      bits[b] = noise_block(key, tensor_id, kRoundingProbe, block);
    }
  }

  /// The 16 random bits of element i of a step from that step's rounding_draws.
  ZOTORCH_HD static uint32_t draw_of(const Words4* bits, int i) {
    return rounding_bits16(bits[i / kRoundingBlock].w, i % kRoundingBlock);
  }

  /// The restore rounding (sweep.h) of the lane's elements: x ← round(x + r), as a restore sweep of
  /// its own would store it. x' is a storage value, so x holds it and r is free again.
  ZOTORCH_HD void restore(const Context& ctx, const SweepPlan& plan, int lane, int pass) {
ZOTORCH_UNROLL
    for (int j = 0; j < kPassSteps; ++j) {
      const int64_t first = ctx.start + step_offset(lane, pass * kPassSteps + j);
      Words4 bits[kRoundingDraws];
      if constexpr (Storage::is_16_bit) {
        if (plan.stochastic_rounding) {
          rounding_draws(restore_rounding_key(plan.rounding_key), ctx.tensor_id, first, bits);
        }
      }
ZOTORCH_UNROLL
      for (int i = 0; i < kVec; ++i) {
        const int e = j * kVec + i;
        if constexpr (Storage::is_16_bit) {
          x[e] = plan.stochastic_rounding
                     ? narrow_stochastic<Storage>(add(Storage::widen(x[e]), r[e]), draw_of(bits, i))
                     : Storage::narrow(add(Storage::widen(x[e]), r[e]));
        } else {
          x[e] = Storage::narrow(add(Storage::widen(x[e]), r[e]));
        }
      }
    }
  }

  /// x ← round(x + r) when staged and not restored yet (kRestoreFirst), y = update(x), one rounding
  /// (stochastic for 16-bit types when asked), and the write back.
  ZOTORCH_HD void store(const Context& ctx, const SweepPlan& plan, int lane, int pass) const {
ZOTORCH_UNROLL
    for (int j = 0; j < kPassSteps; ++j) {
      const int64_t first = ctx.start + step_offset(lane, pass * kPassSteps + j);
      if (first >= ctx.numel) continue;  // tail of the last tile
      // The draws stay packed, 8 per Words4, until each element takes its 16 bits.
      Words4 bits[kRoundingDraws];
      Words4 restore_bits[kRoundingDraws];
      if constexpr (Storage::is_16_bit) {
        if (plan.stochastic_rounding) {
          rounding_draws(plan.rounding_key, ctx.tensor_id, first, bits);
          if (ctx.staged && !kRestoreFirst) {
            rounding_draws(restore_rounding_key(plan.rounding_key), ctx.tensor_id, first, restore_bits);
          }
        }
      }
      S out[kVec];
ZOTORCH_UNROLL
      for (int i = 0; i < kVec; ++i) {
        const int e = j * kVec + i;
        A x_wide = Storage::widen(x[e]);
        if (ctx.staged && !kRestoreFirst) {
          // The restore rounding (sweep.h): θ' = round(θ + r), as a restore sweep of its own stores it.
          if constexpr (Storage::is_16_bit) {
            x_wide = plan.stochastic_rounding
                         ? restore_value_stochastic<Storage>(x_wide, r[e], draw_of(restore_bits, i))
                         : restore_value<Storage>(x_wide, r[e]);
          } else {
            x_wide = restore_value<Storage>(x_wide, r[e]);
          }
        }
        A y;
        if constexpr (Adaptive) {
          y = adaptive_update(ctx.keep, x_wide, s[e], m[e], v[e], ctx.step, ctx.stab);
        } else {
          y = linear_update(ctx.keep, x_wide, s[e]);
        }
        if constexpr (Storage::is_16_bit) {
          out[i] = plan.stochastic_rounding ? narrow_stochastic<Storage>(y, draw_of(bits, i))
                                            : Storage::narrow(y);
        } else {
          out[i] = Storage::narrow(y);
        }
      }
      if (ctx.vector_ok && first + kVec <= ctx.numel) {
        store_vector<S, kVec>(out, ctx.data + first);
      } else {
ZOTORCH_UNROLL
        for (int i = 0; i < kVec; ++i) {
          if (first + i < ctx.numel) ctx.data[first + i] = out[i];
        }
      }
    }
  }
};

/// The whole tile, pass by pass and phase by phase. `Lanes` is the warp: on the device one lane's
/// registers and a __syncwarp barrier; in the emulation all 32 lanes' registers and a loop
/// (tests/cuda/cuda_emulation.h).
template <class Storage, Distribution Dist, bool Adaptive, class Lanes>
ZOTORCH_HD void sweep_tile(Lanes& lanes, const TileContext<Storage>& ctx, const SweepPlan& plan, Words4* staged) {
  using Lane = TileLane<Storage, Dist, Adaptive>;
  for (int pass = 0; pass < Lane::kPasses; ++pass) {
    if (ctx.start + Lane::pass_offset(pass) >= ctx.numel) break;  // tail of the last tile (warp-uniform)
    lanes.for_each([&](Lane& lane_state, int lane) { lane_state.load(ctx, lane, pass); });
    if constexpr (Dist == Distribution::Rademacher) {
      auto run_over_terms = [&](auto restore_terms) {
        constexpr bool kRestoreTerms = decltype(restore_terms)::value;
        for (int round = 0; round * Lane::kStagedTerms < ctx.terms; ++round) {
          lanes.for_each(
              [&](Lane&, int lane) { Lane::template stage<kRestoreTerms>(ctx, plan, lane, pass, round, staged); });
          lanes.sync();
          lanes.for_each([&](Lane& lane_state, int lane) {
            lane_state.template accumulate_staged<kRestoreTerms>(ctx, lane, round, staged);
          });
          lanes.sync();  // the next round overwrites `staged`
        }
      };
      if (ctx.staged) {
        run_over_terms(std::true_type{});
        lanes.for_each([&](Lane& lane_state, int lane) { lane_state.restore(ctx, plan, lane, pass); });
      }
      run_over_terms(std::false_type{});
    } else {
      lanes.for_each([&](Lane& lane_state, int lane) { lane_state.accumulate_normals(ctx, plan, lane, pass); });
    }
    lanes.for_each([&](Lane& lane_state, int lane) { lane_state.store(ctx, plan, lane, pass); });
  }
}

/// Fills the resolved group scalars of one launch, elements begin, begin + stride, ...
template <class A>
ZOTORCH_HD void resolve_scalars(const SweepPlan& plan, const CudaLaunchArgs& args, const ResolvedLayout& layout,
                                A* resolved, int begin, int stride) {
  for (int i = begin; i < layout.size(); i += stride) resolved[i] = resolved_value<A>(plan, args.slot_group, layout, i);
}

/// One warp's share of a launch: tiles first_tile, first_tile + tile_stride, ... of the kind's
/// entries. Tiles are warp-uniform, so every lane takes the same branches and the barriers are safe.
template <class Storage, Distribution Dist, bool Adaptive, class Lanes>
ZOTORCH_HD void sweep_warp_tiles(Lanes& lanes, const SweepPlan& plan, const CudaLaunchArgs& args,
                                 const ResolvedLayout& layout, const typename Storage::acc* resolved, Words4* staged,
                                 int64_t first_tile, int64_t tile_stride) {
  int32_t entry_index = -1;
  for (int64_t tile = first_tile; tile < args.total_tiles; tile += tile_stride) {
    // Consecutive tiles of a warp usually hit the same tensor; search only when they do not. Tiles
    // only grow, so a tile is never before the current entry's first one. The entry's end is read
    // again (a cached load) rather than kept across the loop (docs/cuda.md "Occupancy").
    if (entry_index < 0 ||
        tile >= args.entries[entry_index].first_tile + tiles_of(args.entries[entry_index].numel)) {
      entry_index = find_tile_entry(args.entries, args.num_entries, tile);
    }
    const CudaTableEntry entry = args.entries[entry_index];
    const TileContext<Storage> ctx = make_tile_context<Storage>(entry, tile, plan.num_terms, layout, resolved);
    sweep_tile<Storage, Dist, Adaptive>(lanes, ctx, plan, staged);
  }
}

}  // namespace detail
}  // namespace zotorch
