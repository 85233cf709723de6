// CPU kernels: OpenMP over tokens, each calling the shared per-token functions.
#include <algorithm>
#include <cmath>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "iared/ops.h"
#include "iared/scoring.h"
#include "iared/select.h"

namespace iared {
namespace {

// Below this many rows the threads cost more than they save.
constexpr int64_t kParallelRows = 2048;
// Lanes of the scoring accumulators: one AVX2 vector (H + 2 of them fit in the registers).
constexpr int kCpuWidth = 8;

struct ScoreArgs {
  int64_t C, B;
  const int32_t* offsets;
  const int32_t* positions;
  const float* vecs;
  const float* vec_sums;
  const float* biases;
  int H;
  float eps, threshold;
  int num_prefix;
  float* probs;
  uint8_t* keep;
};

template <int kHeads, typename T>
IARED_HD void score_rows(const T* tokens, const ScoreArgs& a, int64_t t0, int64_t t1) {
  int64_t b = t0 < t1 ? find_sequence(a.offsets, a.B, t0) : 0;
  for (int64_t t = t0; t < t1; ++t) {
    while (t >= a.offsets[b + 1]) ++b;  // rows of one image are contiguous
    const T* x = tokens + t * a.C;
    ScoreAcc acc;
    score_acc_init(acc, a.H);
    score_acc_row<1, kCpuWidth, kHeads>(acc, x, to_float(x[0]), a.vecs + b * a.H * a.C, a.C, a.H, 0);
    const float p = score_finalize(acc, a.C, a.H, a.vec_sums + b * a.H, a.biases + b * a.H, a.eps);
    a.probs[t] = p;
    if (a.keep) a.keep[t] = (p > a.threshold || is_prefix(a.positions, t, a.num_prefix)) ? 1 : 0;
  }
}

// The head counts of common ViTs get their own instantiation (accumulators in registers).
template <typename T>
IARED_HD void score_rows_any_heads(const T* x, const ScoreArgs& a, int64_t t0, int64_t t1) {
  switch (a.H) {
    case 3: return score_rows<3>(x, a, t0, t1);
    case 4: return score_rows<4>(x, a, t0, t1);
    case 6: return score_rows<6>(x, a, t0, t1);
    case 8: return score_rows<8>(x, a, t0, t1);
    case 12: return score_rows<12>(x, a, t0, t1);
    case 16: return score_rows<16>(x, a, t0, t1);
    default: return score_rows<0>(x, a, t0, t1);
  }
}

// One clone set per dtype; each thread runs a contiguous range of rows.
IARED_CPU_CLONES void score_rows_f32(const void* x, const ScoreArgs& a, int64_t t0, int64_t t1) {
  score_rows_any_heads(static_cast<const float*>(x), a, t0, t1);
}
IARED_CPU_CLONES void score_rows_f16(const void* x, const ScoreArgs& a, int64_t t0, int64_t t1) {
  score_rows_any_heads(static_cast<const half_bits*>(x), a, t0, t1);
}
IARED_CPU_CLONES void score_rows_bf16(const void* x, const ScoreArgs& a, int64_t t0, int64_t t1) {
  score_rows_any_heads(static_cast<const bf16_bits*>(x), a, t0, t1);
}

// Split [0, n) into contiguous ranges, one per thread, when the work is worth the threads.
template <typename F>
void parallel_ranges(int64_t n, bool parallel, F&& fn) {
#ifdef _OPENMP
  if (parallel && omp_get_max_threads() > 1) {
#pragma omp parallel
    {
      const int64_t nt = omp_get_num_threads(), i = omp_get_thread_num();
      fn(n * i / nt, n * (i + 1) / nt);
    }
    return;
  }
#endif
  (void)parallel;
  fn(int64_t(0), n);
}

// q[b, o] = wq[o] . ln[b] + bq[o] for rows o in [o0, o1): each weight row read once for all B.
IARED_CPU_CLONES void fold_query_rows(const float* ln, int64_t B, int64_t C, const float* wq, const float* bq,
                                      int64_t Q, int64_t o0, int64_t o1, float* q) {
  for (int64_t o = o0; o < o1; ++o) {
    const float* w = wq + o * C;
    for (int64_t b = 0; b < B; ++b) {
      const float* x = ln + b * C;
      float s = 0.f;
      IARED_SIMD_SUM(s)
      for (int64_t c = 0; c < C; ++c) s += w[c] * x[c];
      q[b * Q + o] = s + bq[o];
    }
  }
}

// vecs[b, h, c] = sum_d q[b, h*D+d] wk[h*D+d, c] for columns c in [c0, c1): each thread streams its
// columns of every weight row once for all B.
IARED_CPU_CLONES void fold_key_columns(const float* q, int64_t B, int64_t C, const float* wk, int H, int64_t D,
                                       int64_t c0, int64_t c1, float* vecs) {
  const int64_t Q = int64_t(H) * D;
  for (int64_t b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) std::fill(vecs + (b * H + h) * C + c0, vecs + (b * H + h) * C + c1, 0.f);
  for (int h = 0; h < H; ++h) {
    for (int64_t d = 0; d < D; ++d) {
      const int64_t r = int64_t(h) * D + d;
      const float* w = wk + r * C;
      for (int64_t b = 0; b < B; ++b) {
        const float a = q[b * Q + r];
        float* v = vecs + (b * H + h) * C;
        IARED_PRAGMA(omp simd)
        for (int64_t c = c0; c < c1; ++c) v[c] += a * w[c];
      }
    }
  }
}

}  // namespace

void interpreter_scores_cpu(const void* tokens, DType dtype, int64_t T, int64_t C,
                            const int32_t* offsets, int64_t B, const int32_t* positions,
                            const float* vecs, const float* vec_sums, const float* biases, int H,
                            float eps, float threshold, int num_prefix, float* probs,
                            uint8_t* keep) {
  const ScoreArgs args{C, B, offsets, positions, vecs, vec_sums, biases, H, eps, threshold, num_prefix, probs, keep};
  auto* rows = dtype == DType::kFloat32 ? score_rows_f32 : dtype == DType::kFloat16 ? score_rows_f16 : score_rows_bf16;
  parallel_ranges(T, T * C * H >= (int64_t(1) << 17), [&](int64_t t0, int64_t t1) { rows(tokens, args, t0, t1); });
}

void interpreter_fold_cpu(const float* cls, int64_t B, int64_t C, const float* wq, const float* bq,
                          const float* wk, const float* bk, int H, int64_t D, float eps, float* vecs,
                          float* biases) {
  const int64_t Q = int64_t(H) * D;
  thread_local std::vector<float> scratch;  // LN(cls) [B, C], then q [B, Q]
  scratch.resize(size_t(B * (C + Q)));
  float* ln = scratch.data();
  float* q = ln + B * C;
  for (int64_t b = 0; b < B; ++b) {  // LayerNorm without affine, two passes in double (B rows only)
    const float* x = cls + b * C;
    double mean = 0.0, var = 0.0;
    for (int64_t c = 0; c < C; ++c) mean += x[c];
    mean /= double(C);
    for (int64_t c = 0; c < C; ++c) var += (x[c] - mean) * (x[c] - mean);
    const double inv = 1.0 / std::sqrt(var / double(C) + double(eps));
    for (int64_t c = 0; c < C; ++c) ln[b * C + c] = float((x[c] - mean) * inv);
  }
  // One parallel region, both products: rows of wq per thread, then (after the barrier: every q
  // done) columns of wk, split at multiples of 16 floats (a cache line where a row is aligned).
  const auto split = [C](int64_t i, int64_t nt) { return std::min(C, (C * i / nt + 15) / 16 * 16); };
#ifdef _OPENMP
  if (Q * C >= (int64_t(1) << 15) && omp_get_max_threads() > 1) {
#pragma omp parallel
    {
      const int64_t nt = omp_get_num_threads(), i = omp_get_thread_num();
      fold_query_rows(ln, B, C, wq, bq, Q, Q * i / nt, Q * (i + 1) / nt, q);
#pragma omp barrier
      fold_key_columns(q, B, C, wk, H, D, split(i, nt), split(i + 1, nt), vecs);
    }
  } else
#endif
  {
    (void)split;
    fold_query_rows(ln, B, C, wq, bq, Q, 0, Q, q);
    fold_key_columns(q, B, C, wk, H, D, 0, C, vecs);
  }
  for (int64_t b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      float s = 0.f;
      for (int64_t d = 0; d < D; ++d) s += q[b * Q + h * D + d] * bk[h * D + d];
      biases[b * H + h] = s;
    }
}

void topk_keep_cpu(const float* scores, int64_t T, const int32_t* offsets, int64_t B,
                   const int32_t* positions, double level, int num_prefix, uint8_t* keep) {
  // Per sequence: select its k first patch tokens in the `ranks_before` order (nth_element, O(n)
  // on average) rather than rank-count every token (O(n^2)). A NaN score breaks the order's
  // strictness, so such a sequence is rank-counted, exactly as the GPU does.
#pragma omp parallel for schedule(dynamic, 1) if (T >= kParallelRows && B > 1)
  for (int64_t b = 0; b < B; ++b) {
    const int64_t begin = offsets[b], end = offsets[b + 1];
    thread_local std::vector<int64_t> patches;
    patches.clear();
    bool nan = false;
    for (int64_t t = begin; t < end; ++t) {
      const bool patch = positions[t] >= num_prefix;
      keep[t] = patch ? 0 : 1;
      if (patch) {
        patches.push_back(t);
        nan |= scores[t] != scores[t];
      }
    }
    const int64_t k = level_keep_count(int64_t(patches.size()), level);
    if (nan) {
      for (int64_t t : patches) keep[t] = topk_keep_token(scores, positions, begin, end, t, k, num_prefix);
      continue;
    }
    const auto before = [scores](int64_t a, int64_t c) { return ranks_before(scores[a], a, scores[c], c); };
    if (k > 0 && k < int64_t(patches.size())) std::nth_element(patches.begin(), patches.begin() + k, patches.end(), before);
    for (int64_t i = 0; i < k; ++i) keep[patches[size_t(i)]] = 1;
  }
}

int64_t compact_plan_cpu(const uint8_t* keep, const int32_t* positions, int64_t T,
                         const int32_t* offsets, int64_t B, int num_prefix, int32_t* scan,
                         int32_t* new_offsets) {
  // Exclusive scan in chunks: each thread counts its chunk, a serial pass offsets the chunks,
  // each thread writes its chunk's scan.
  int chunks = 1;
#ifdef _OPENMP
  if (T >= 4 * kParallelRows) chunks = omp_get_max_threads();
#endif
  if (chunks == 1) {  // one image or a few: no OpenMP region, not free to enter (docs/benchmarks.md, 'Ops (issue 3)')
    int32_t run = 0;
    for (int64_t t = 0; t < T; ++t) {
      scan[t] = run;
      run += survives(keep, positions, t, num_prefix);
    }
    for (int64_t b = 0; b <= B; ++b) new_offsets[b] = compacted_offset(scan, T, run, offsets[b]);
    return run;
  }
  std::vector<int32_t> base(chunks + 1, 0);
  const int64_t step = (T + chunks - 1) / std::max(chunks, 1);
#pragma omp parallel for schedule(static) num_threads(chunks) if (chunks > 1)
  for (int i = 0; i < chunks; ++i) {
    int32_t n = 0;
    for (int64_t t = i * step; t < std::min(T, (i + 1) * step); ++t) n += survives(keep, positions, t, num_prefix);
    base[i + 1] = n;
  }
  for (int i = 0; i < chunks; ++i) base[i + 1] += base[i];
#pragma omp parallel for schedule(static) num_threads(chunks) if (chunks > 1)
  for (int i = 0; i < chunks; ++i) {
    int32_t run = base[i];
    for (int64_t t = i * step; t < std::min(T, (i + 1) * step); ++t) {
      scan[t] = run;
      run += survives(keep, positions, t, num_prefix);
    }
  }
  const int32_t total = base[chunks];
  for (int64_t b = 0; b <= B; ++b) new_offsets[b] = compacted_offset(scan, T, total, offsets[b]);
  return total;
}

void compact_gather_cpu(const void* tokens, size_t row_bytes, const int32_t* positions,
                        const uint8_t* keep, const int32_t* scan, int64_t T, int num_prefix,
                        void* out_tokens, int32_t* out_positions) {
  const char* src = static_cast<const char*>(tokens);
  char* dst = static_cast<char*>(out_tokens);
  // Runs of consecutive survivors are contiguous in the output too: one copy per run. One image
  // (300 KB at DeiT-S) stays on one thread: waking a second costs about what it would save.
  parallel_ranges(T, T * int64_t(row_bytes) >= (int64_t(1) << 20), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1;) {
      if (!survives(keep, positions, t, num_prefix)) { ++t; continue; }
      int64_t end = t + 1;
      while (end < t1 && survives(keep, positions, end, num_prefix)) ++end;
      copy_row(dst + size_t(scan[t]) * row_bytes, src + size_t(t) * row_bytes, size_t(end - t) * row_bytes, 0, 1);
      copy_row(out_positions + scan[t], positions + t, size_t(end - t) * sizeof(int32_t), 0, 1);
      t = end;
    }
  });
}

}  // namespace iared
