// Keep decisions and compaction, per token.
#pragma once
#include <cmath>

#include "common.h"

namespace iared {

// Patch tokens kept by policy "level" out of n: ceil(level * n), robust to float error.
IARED_HD int level_keep_count(int64_t n, double level) {
  double k = ceil(level * double(n) - 1e-6);
  if (k < 0) k = 0;
  if (k > double(n)) k = double(n);
  return int(k);
}

IARED_HD int64_t count_patches(const int32_t* positions, int64_t begin, int64_t end, int num_prefix) {
  int64_t n = 0;
  for (int64_t j = begin; j < end; ++j) n += positions[j] >= num_prefix;
  return n;
}

// The top-k order: token a (score sa) comes before token b when its score is higher, or equal and
// it is earlier. A strict total order on non-NaN scores, so every way of taking the top k by it
// (the rank count below, the CPU's selection) keeps the same tokens: a stable descending sort.
IARED_HD bool ranks_before(float sa, int64_t a, float sb, int64_t b) {
  return sa > sb || (sa == sb && a < b);
}

// Top-k by rank counting: token t is kept when fewer than k patch tokens of its sequence come
// before it. O(n) per token, one thread per token on the GPU; O(sum n_b^2) per call, so the CPU
// selects per sequence instead (same order, O(n) on average) where no score is NaN.
IARED_HD bool topk_keep_token(const float* scores, const int32_t* positions, int64_t begin,
                              int64_t end, int64_t t, int64_t k, int num_prefix) {
  if (positions[t] < num_prefix) return true;
  const float st = scores[t];
  int64_t rank = 0;
  for (int64_t j = begin; j < end && rank < k; ++j) {
    if (positions[j] < num_prefix || j == t) continue;
    rank += ranks_before(scores[j], j, st, t);
  }
  return rank < k;
}

// A token survives compaction when flagged or when it is a prefix token.
IARED_HD int32_t survives(const uint8_t* keep, const int32_t* positions, int64_t t, int num_prefix) {
  return (keep[t] != 0 || positions[t] < num_prefix) ? 1 : 0;
}

// New offset of a sequence starting at old row o, from the exclusive scan of survival flags.
IARED_HD int32_t compacted_offset(const int32_t* scan, int64_t T, int32_t total, int32_t o) {
  return o < T ? scan[o] : total;
}

// Copy one row of `bytes` bytes; on the device the lanes of a warp share it in 16-, 4- or 1-byte
// words, whichever the row's size and alignment allow.
IARED_HD void copy_row(void* dst, const void* src, size_t bytes, int lane, int lanes) {
#if defined(__CUDA_ARCH__)
  const uintptr_t align = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) | bytes;
  if ((align & 15) == 0) {
    const int4* s = static_cast<const int4*>(src);
    int4* d = static_cast<int4*>(dst);
    for (size_t i = lane; i < bytes / 16; i += lanes) d[i] = s[i];
  } else if ((align & 3) == 0) {
    const int* s = static_cast<const int*>(src);
    int* d = static_cast<int*>(dst);
    for (size_t i = lane; i < bytes / 4; i += lanes) d[i] = s[i];
  } else {
    const char* s = static_cast<const char*>(src);
    char* d = static_cast<char*>(dst);
    for (size_t i = lane; i < bytes; i += lanes) d[i] = s[i];
  }
#else
  (void)lane;
  (void)lanes;
  memcpy(dst, src, bytes);
#endif
}

}  // namespace iared
