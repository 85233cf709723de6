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

// Accumulate a slice of row x ([C]) against vecs v ([H, C]) in one pass: groups of kWidth
// consecutive elements, group g = g_begin, g_begin + kStep, ... Each of the kWidth lanes keeps
// its own partial sums, so the H + 2 reductions are independent chains the host compiler turns into
// vector FMAs; the device uses kWidth = 1 and strides its 32 lanes (kStep = 32) for coalescing.
// kHeads > 0 fixes H at compile time so the accumulators stay in registers (0 = use H).
template <int kStep, int kWidth, int kHeads = 0, typename T>
IARED_HD void score_acc_row(ScoreAcc& a, const T* x, float x0, const float* v, int64_t C, int H_,
                            int64_t g_begin) {
  using V = typename FloatPack<kWidth>::type;
  const int H = kHeads > 0 ? kHeads : H_;
  V s = V(), ss = V(), d[kMaxHeads];
  for (int h = 0; h < H; ++h) d[h] = V();
  const int64_t full = C / kWidth;
  for (int64_t g = g_begin; g < full; g += kStep) {
    const int64_t c = g * kWidth;
    float xs[kWidth];
    for (int l = 0; l < kWidth; ++l) xs[l] = to_float(x[c + l]) - x0;
    V xc;
    memcpy(&xc, xs, sizeof(V));
    s += xc;
    ss += xc * xc;
    for (int h = 0; h < H; ++h) {
      V vh;
      memcpy(&vh, v + int64_t(h) * C + c, sizeof(V));
      d[h] += vh * xc;
    }
  }
  for (int l = 0; l < kWidth; ++l) {
    a.sum += pack_lane(s, l);
    a.sumsq += pack_lane(ss, l);
    for (int h = 0; h < H; ++h) a.dot[h] += pack_lane(d[h], l);
  }
  if (g_begin == 0) {  // the tail (C not a multiple of kWidth) goes to the first lane
    for (int64_t c = full * kWidth; c < C; ++c) {
      const float xc = to_float(x[c]) - x0;
      a.sum += xc;
      a.sumsq += xc * xc;
      for (int h = 0; h < H; ++h) a.dot[h] += v[int64_t(h) * C + c] * xc;
    }
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
