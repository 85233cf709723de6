// Interpreter scoring, per token: keep probability = mean_h sigmoid(v_h . LN(x) + b_h).
//
// One pass over the row accumulates, on values shifted by x[0] (guards the variance against
// cancellation), the sum, the sum of squares and the H raw dot products; LN(x) . v_h then follows
// from them: sum_c v_hc (x_c - mu) / sigma = (dot_h - mean_shifted * vsum_h) / sigma.
// CPU: one thread walks the whole row (kStep = 1). CUDA: each lane of a warp walks every 32nd
// element (kStep = 32), the warp merges the accumulators, one lane finalises.
#pragma once
#include <cmath>

#include "common.h"

namespace iared {

constexpr int kMaxHeads = 16;

struct ScoreAcc {
  float sum;
  float sumsq;
  float dot[kMaxHeads];
};

IARED_HD void score_acc_init(ScoreAcc& a, int H) {
  a.sum = 0.f;
  a.sumsq = 0.f;
  for (int h = 0; h < H; ++h) a.dot[h] = 0.f;
}

// Accumulate elements c = c_begin, c_begin + kStep, ... of row x ([C]) against vecs v ([H, C]).
template <int kStep, typename T>
IARED_HD void score_acc_row(ScoreAcc& a, const T* x, float x0, const float* v, int64_t C, int H,
                            int64_t c_begin) {
  float s = 0.f, ss = 0.f;
  IARED_SIMD_SUM(s)
  for (int64_t c = c_begin; c < C; c += kStep) s += to_float(x[c]) - x0;
  IARED_SIMD_SUM(ss)
  for (int64_t c = c_begin; c < C; c += kStep) {
    const float xc = to_float(x[c]) - x0;
    ss += xc * xc;
  }
  a.sum += s;
  a.sumsq += ss;
  for (int h = 0; h < H; ++h) {
    const float* vh = v + int64_t(h) * C;
    float d = 0.f;
    IARED_SIMD_SUM(d)
    for (int64_t c = c_begin; c < C; c += kStep) d += vh[c] * (to_float(x[c]) - x0);
    a.dot[h] += d;
  }
}

IARED_HD void score_acc_merge(ScoreAcc& a, const ScoreAcc& b, int H) {
  a.sum += b.sum;
  a.sumsq += b.sumsq;
  for (int h = 0; h < H; ++h) a.dot[h] += b.dot[h];
}

IARED_HD float sigmoidf(float z) { return 1.f / (1.f + expf(-z)); }

// vsum[h] = sum_c v[h, c]; bias[h] the folded bias. Returns the keep probability.
IARED_HD float score_finalize(const ScoreAcc& a, int64_t C, int H, const float* vsum,
                              const float* bias, float eps) {
  const float mean = a.sum / float(C);
  float var = a.sumsq / float(C) - mean * mean;
  var = var > 0.f ? var : 0.f;
  const float rstd = 1.f / sqrtf(var + eps);
  float p = 0.f;
  for (int h = 0; h < H; ++h) p += sigmoidf((a.dot[h] - mean * vsum[h]) * rstd + bias[h]);
  return p / float(H);
}

// Prefix tokens (class, distillation) are never dropped.
IARED_HD bool is_prefix(const int32_t* positions, int64_t t, int num_prefix) {
  return positions != nullptr && positions[t] < num_prefix;
}

}  // namespace iared
