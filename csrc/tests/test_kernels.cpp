// Unit tests of the shared per-element functions and the CPU kernels, against naive double loops.
// Plain C++ (no framework): prints "N passed, N failed" and exits non-zero on failure.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "iared/ops.h"
#include "iared/scoring.h"
#include "iared/select.h"

static int g_passed = 0, g_failed = 0;
#define CHECK(cond)                                                         \
  do {                                                                      \
    if (cond) ++g_passed;                                                   \
    else { ++g_failed; std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); } \
  } while (0)

static uint16_t float_to_half_bits(float f) {  // round-to-nearest for normal range test values
  uint32_t u; std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const int exp = int((u >> 23) & 0xff) - 127 + 15;
  uint32_t mant = u & 0x7fffffu;
  if (exp <= 0) return uint16_t(sign);
  uint32_t h = sign | (uint32_t(exp) << 10) | (mant >> 13);
  if (mant & 0x1000u) ++h;
  return uint16_t(h);
}

static void test_half_and_bf16() {
  const float values[] = {0.f, 1.f, -2.5f, 65504.f, 6.103515625e-05f, 0.333251953125f};
  for (float v : values) CHECK(iared::to_float(iared::half_bits{float_to_half_bits(v)}) == v);
  CHECK(iared::to_float(iared::half_bits{0x0001}) == 5.9604644775390625e-8f);  // smallest subnormal
  CHECK(std::isinf(iared::to_float(iared::half_bits{0x7c00})));
  CHECK(std::isnan(iared::to_float(iared::half_bits{0x7e00})));
  CHECK(iared::to_float(iared::bf16_bits{0x3f80}) == 1.f);
  CHECK(iared::to_float(iared::bf16_bits{0xc020}) == -2.5f);
}

static void test_find_sequence() {
  const int32_t offsets[] = {0, 3, 3, 7, 8};  // an empty sequence at 1
  const int64_t expect[] = {0, 0, 0, 2, 2, 2, 2, 3};
  for (int t = 0; t < 8; ++t) CHECK(iared::find_sequence(offsets, 4, t) == expect[t]);
}

static void test_level_keep_count() {
  CHECK(iared::level_keep_count(10, 0.7) == 7);  // 0.7 * 10 is 7.000000000000001
  CHECK(iared::level_keep_count(196, 0.5) == 98);
  CHECK(iared::level_keep_count(5, 0.5) == 3);
  CHECK(iared::level_keep_count(5, 0.0) == 0);
  CHECK(iared::level_keep_count(5, 1.0) == 5);
  CHECK(iared::level_keep_count(0, 0.5) == 0);
}

// Score of one row, double precision, straight from the definition.
static double naive_score(const std::vector<float>& x, const std::vector<float>& v,
                          const std::vector<float>& bias, int H, double eps) {
  const size_t C = x.size();
  double mean = 0, var = 0;
  for (float e : x) mean += e;
  mean /= C;
  for (float e : x) var += (e - mean) * (e - mean);
  var /= C;
  double p = 0;
  for (int h = 0; h < H; ++h) {
    double z = bias[h];
    for (size_t c = 0; c < C; ++c) z += v[h * C + c] * (x[c] - mean) / std::sqrt(var + eps);
    p += 1.0 / (1.0 + std::exp(-z));
  }
  return p / H;
}

static void test_ranks_before() {
  // higher score first; equal scores: the earlier token; never before itself; +0 and -0 tie
  CHECK(iared::ranks_before(0.9f, 5, 0.1f, 1) && !iared::ranks_before(0.1f, 1, 0.9f, 5));
  CHECK(iared::ranks_before(0.5f, 2, 0.5f, 3) && !iared::ranks_before(0.5f, 3, 0.5f, 2));
  CHECK(!iared::ranks_before(0.5f, 2, 0.5f, 2));
  CHECK(iared::ranks_before(-0.0f, 1, 0.0f, 2) && !iared::ranks_before(0.0f, 2, -0.0f, 1));
  // the CPU's per-sequence selection equals the rank count (the GPU's) on ties and a NaN
  const int32_t offsets[] = {0, 7};
  const int32_t positions[] = {0, 1, 2, 3, 4, 5, 6};
  const float ties[] = {0.f, 0.5f, 0.5f, 0.25f, 0.5f, 0.25f, 1.f};
  const float withnan[] = {0.f, 0.5f, NAN, 0.25f, 0.5f, 0.25f, 1.f};
  for (const float* scores : {ties, withnan}) {
    uint8_t keep[7];
    iared::topk_keep_cpu(scores, 7, offsets, 1, positions, 0.5, 1, keep);
    for (int t = 0; t < 7; ++t) CHECK(keep[t] == (iared::topk_keep_token(scores, positions, 0, 7, t, 3, 1) ? 1 : 0));
  }
}

static void test_scoring_row_and_split() {
  std::mt19937 rng(1);
  std::normal_distribution<float> n01;
  for (int C : {1, 7, 33, 384}) {
    const int H = 6;
    std::vector<float> x(C), v(H * C), bias(H), vsum(H, 0.f);
    for (auto& e : x) e = 100.f + 3.f * n01(rng);  // a large mean: the shift must save the variance
    for (auto& e : v) e = n01(rng) / std::sqrt(float(C));
    for (auto& e : bias) e = n01(rng);
    for (int h = 0; h < H; ++h) for (int c = 0; c < C; ++c) vsum[h] += v[h * C + c];
    const double expect = naive_score(x, v, bias, H, 1e-6);
    iared::ScoreAcc acc;
    iared::score_acc_init(acc, H);
    iared::score_acc_row<1, 16>(acc, x.data(), x[0], v.data(), C, H, 0);
    const float whole = iared::score_finalize(acc, C, H, vsum.data(), bias.data(), 1e-6f);
    CHECK(std::fabs(whole - expect) < 1e-5 || C == 1);
    // the device's split: 32 lanes over strided elements, then merged, must agree
    iared::ScoreAcc merged;
    iared::score_acc_init(merged, H);
    for (int lane = 0; lane < 32; ++lane) {
      iared::ScoreAcc part;
      iared::score_acc_init(part, H);
      iared::score_acc_row<32, 1>(part, x.data(), x[0], v.data(), C, H, lane);
      iared::score_acc_merge(merged, part, H);
    }
    const float split = iared::score_finalize(merged, C, H, vsum.data(), bias.data(), 1e-6f);
    CHECK(std::fabs(split - whole) < 1e-5);
  }
}

static void test_cpu_kernels() {
  // two images: 5 and 4 tokens, class token first
  const int32_t offsets[] = {0, 5, 9};
  const int32_t positions[] = {0, 1, 2, 3, 4, 0, 2, 5, 9};
  const float scores[] = {0.f, 0.4f, 0.9f, 0.4f, 0.1f, 0.f, 0.2f, 0.3f, 0.25f};
  uint8_t keep[9];
  iared::topk_keep_cpu(scores, 9, offsets, 2, positions, 0.5, 1, keep);
  const uint8_t expect_keep[] = {1, 1, 1, 0, 0, 1, 0, 1, 1};  // k = 2 and 2; tie .4/.4: earlier wins
  CHECK(std::memcmp(keep, expect_keep, 9) == 0);
  float tokens[9][3];
  for (int t = 0; t < 9; ++t) for (int c = 0; c < 3; ++c) tokens[t][c] = float(10 * t + c);
  int32_t scan[9], new_offsets[3], out_pos[9];
  float out[9][3];
  const int64_t kept = iared::compact_plan_cpu(keep, positions, 9, offsets, 2, 1, scan, new_offsets);
  iared::compact_gather_cpu(tokens, sizeof(tokens[0]), positions, keep, scan, 9, 1, out, out_pos);
  CHECK(kept == 6);
  CHECK(new_offsets[0] == 0 && new_offsets[1] == 3 && new_offsets[2] == 6);
  const int rows[] = {0, 1, 2, 5, 7, 8};
  for (int i = 0; i < 6; ++i) {
    CHECK(out_pos[i] == positions[rows[i]]);
    CHECK(std::memcmp(out[i], tokens[rows[i]], sizeof(out[i])) == 0);
  }
  // the class token survives even when its flag is 0
  uint8_t none[9] = {0};
  CHECK(iared::compact_plan_cpu(none, positions, 9, offsets, 2, 1, scan, new_offsets) == 2);
}

static void test_scores_kernel_all_dtypes() {
  std::mt19937 rng(2);
  std::normal_distribution<float> n01;
  const int T = 11, C = 19, H = 3, B = 2;
  const int32_t offsets[] = {0, 6, 11};
  std::vector<float> x(T * C), v(B * H * C), bias(B * H), vsum(B * H, 0.f), probs(T);
  std::vector<uint16_t> xh(T * C);
  for (int i = 0; i < T * C; ++i) {
    xh[i] = float_to_half_bits(n01(rng));
    x[i] = iared::to_float(iared::half_bits{xh[i]});  // the same values in both dtypes
  }
  for (auto& e : v) e = n01(rng) * 0.3f;
  for (auto& e : bias) e = n01(rng);
  for (int i = 0; i < B * H; ++i) for (int c = 0; c < C; ++c) vsum[i] += v[i * C + c];
  std::vector<float> ph(T);
  iared::interpreter_scores_cpu(x.data(), iared::DType::kFloat32, T, C, offsets, B, nullptr, v.data(),
                                vsum.data(), bias.data(), H, 1e-6f, 0.5f, 1, probs.data(), nullptr);
  iared::interpreter_scores_cpu(xh.data(), iared::DType::kFloat16, T, C, offsets, B, nullptr, v.data(),
                                vsum.data(), bias.data(), H, 1e-6f, 0.5f, 1, ph.data(), nullptr);
  for (int t = 0; t < T; ++t) {
    const int b = t < 6 ? 0 : 1;
    std::vector<float> row(x.begin() + t * C, x.begin() + (t + 1) * C);
    std::vector<float> vb(v.begin() + b * H * C, v.begin() + (b + 1) * H * C);
    std::vector<float> bb(bias.begin() + b * H, bias.begin() + (b + 1) * H);
    const double expect = naive_score(row, vb, bb, H, 1e-6);
    CHECK(std::fabs(probs[t] - expect) < 1e-5);
    CHECK(std::fabs(ph[t] - probs[t]) < 1e-6);
  }
}

// The folded query against its definition in double: LN(cls), q = wq LN + bq, then per head.
static void test_interpreter_fold() {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  // C not a multiple of 16: uneven column splits; D = 64 with C = 384: DeiT-S, the threaded path
  for (const int64_t B : {int64_t(1), int64_t(3)})
    for (const int H : {1, 3, 6}) {
      const int64_t D = H == 6 ? 64 : 5, C = H == 6 ? 384 : 37, Q = H * D;
      std::vector<float> cls(B * C), wq(Q * C), bq(Q), wk(Q * C), bk(Q), vecs(B * H * C), biases(B * H);
      for (auto* v : {&cls, &wq, &bq, &wk, &bk})
        for (float& x : *v) x = nd(rng);
      iared::interpreter_fold_cpu(cls.data(), B, C, wq.data(), bq.data(), wk.data(), bk.data(), H, D, 1e-6f,
                                  vecs.data(), biases.data());
      double worst = 0.0, scale = 0.0;
      for (int64_t b = 0; b < B; ++b) {
        double mean = 0.0, var = 0.0;
        for (int64_t c = 0; c < C; ++c) mean += cls[b * C + c] / double(C);
        for (int64_t c = 0; c < C; ++c) var += (cls[b * C + c] - mean) * (cls[b * C + c] - mean) / double(C);
        std::vector<double> q(Q);
        for (int64_t o = 0; o < Q; ++o) {
          q[o] = bq[o];
          for (int64_t c = 0; c < C; ++c) q[o] += wq[o * C + c] * (cls[b * C + c] - mean) / std::sqrt(var + 1e-6);
        }
        for (int h = 0; h < H; ++h) {
          double bias = 0.0;
          for (int64_t d = 0; d < D; ++d) bias += q[h * D + d] * bk[h * D + d];
          worst = std::max(worst, std::fabs(bias - biases[b * H + h]));
          scale = std::max(scale, std::fabs(bias));
          for (int64_t c = 0; c < C; ++c) {
            double v = 0.0;
            for (int64_t d = 0; d < D; ++d) v += q[h * D + d] * wk[(h * D + d) * C + c];
            worst = std::max(worst, std::fabs(v - vecs[(b * H + h) * C + c]));
            scale = std::max(scale, std::fabs(v));
          }
        }
      }
      CHECK(worst <= 1e-5 * (1.0 + scale));
    }
}

int main() {
  test_half_and_bf16();
  test_find_sequence();
  test_level_keep_count();
  test_ranks_before();
  test_scoring_row_and_split();
  test_cpu_kernels();
  test_scores_kernel_all_dtypes();
  test_interpreter_fold();
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
