// CPU kernels: OpenMP over tokens, each calling the shared per-token functions.
#include <algorithm>
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

template <typename T>
void scores_impl(const T* tokens, int64_t T_, int64_t C, const int32_t* offsets, int64_t B,
                 const int32_t* positions, const float* vecs, const float* vec_sums,
                 const float* biases, int H, float eps, float threshold, int num_prefix,
                 float* probs, uint8_t* keep) {
  // Parallel over rows; the image of each row comes from its offsets (rows of one image are
  // contiguous, so the static schedule keeps each thread mostly on one image's vectors).
#pragma omp parallel for schedule(static) if (T_ * C >= kParallelRows * 64)
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t b = find_sequence(offsets, B, t);
    const T* x = tokens + t * C;
    ScoreAcc acc;
    score_acc_init(acc, H);
    score_acc_row<1>(acc, x, to_float(x[0]), vecs + b * H * C, C, H, 0);
    const float p = score_finalize(acc, C, H, vec_sums + b * H, biases + b * H, eps);
    probs[t] = p;
    if (keep) keep[t] = (p > threshold || is_prefix(positions, t, num_prefix)) ? 1 : 0;
  }
}

}  // namespace

void interpreter_scores_cpu(const void* tokens, DType dtype, int64_t T, int64_t C,
                            const int32_t* offsets, int64_t B, const int32_t* positions,
                            const float* vecs, const float* vec_sums, const float* biases, int H,
                            float eps, float threshold, int num_prefix, float* probs,
                            uint8_t* keep) {
  switch (dtype) {
    case DType::kFloat32:
      return scores_impl(static_cast<const float*>(tokens), T, C, offsets, B, positions, vecs,
                         vec_sums, biases, H, eps, threshold, num_prefix, probs, keep);
    case DType::kFloat16:
      return scores_impl(static_cast<const half_bits*>(tokens), T, C, offsets, B, positions, vecs,
                         vec_sums, biases, H, eps, threshold, num_prefix, probs, keep);
    case DType::kBFloat16:
      return scores_impl(static_cast<const bf16_bits*>(tokens), T, C, offsets, B, positions, vecs,
                         vec_sums, biases, H, eps, threshold, num_prefix, probs, keep);
  }
}

void topk_keep_cpu(const float* scores, int64_t T, const int32_t* offsets, int64_t B,
                   const int32_t* positions, double rho, int num_prefix, uint8_t* keep) {
  std::vector<int64_t> k(B);
  for (int64_t b = 0; b < B; ++b)
    k[b] = ratio_keep_count(count_patches(positions, offsets[b], offsets[b + 1], num_prefix), rho);
#pragma omp parallel for schedule(dynamic, 64) if (T >= kParallelRows)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t b = find_sequence(offsets, B, t);
    keep[t] = topk_keep_token(scores, positions, offsets[b], offsets[b + 1], t, k[b], num_prefix);
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
#pragma omp parallel for schedule(static) if (T * int64_t(row_bytes) >= (int64_t(1) << 20))
  for (int64_t t = 0; t < T; ++t) {
    if (!survives(keep, positions, t, num_prefix)) continue;
    copy_row(dst + size_t(scan[t]) * row_bytes, src + size_t(t) * row_bytes, row_bytes, 0, 1);
    out_positions[scan[t]] = positions[t];
  }
}

}  // namespace iared
