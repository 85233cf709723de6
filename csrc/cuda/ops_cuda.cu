// CUDA kernels: launch configuration around the shared per-token functions of csrc/iared.
// Only the device-wide scan (CUB) is CUDA-only logic.
#include <cuda_runtime.h>

#include <cub/device/device_scan.cuh>

#include "iared/ops.h"
#include "iared/scoring.h"
#include "iared/select.h"

namespace iared {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
// A launch's own error (bad configuration, no kernel image for this GPU), taken right after it.
inline int launched() { return int(cudaGetLastError()); }
inline unsigned blocks_for(int64_t n, int per_block) { return unsigned((n + per_block - 1) / per_block); }

// One warp per token: lanes accumulate strided elements, shuffles merge, lane 0 finalises.
template <typename T>
__global__ void scores_kernel(const T* tokens, int64_t T_, int64_t C, const int32_t* offsets,
                              int64_t B, const int32_t* positions, const float* vecs,
                              const float* vec_sums, const float* biases, int H, float eps,
                              float threshold, int num_prefix, float* probs, uint8_t* keep) {
  const int64_t t = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (t >= T_) return;
  const int64_t b = find_sequence(offsets, B, t);
  const T* x = tokens + t * C;
  ScoreAcc acc;
  score_acc_init(acc, H);
  score_acc_row<kWarp, 1>(acc, x, to_float(x[0]), vecs + b * H * C, C, H, lane);
  for (int off = kWarp / 2; off > 0; off /= 2) {
    ScoreAcc other;
    other.sum = __shfl_down_sync(0xffffffffu, acc.sum, off);
    other.sumsq = __shfl_down_sync(0xffffffffu, acc.sumsq, off);
    for (int h = 0; h < H; ++h) other.dot[h] = __shfl_down_sync(0xffffffffu, acc.dot[h], off);
    score_acc_merge(acc, other, H);
  }
  if (lane == 0) {
    const float p = score_finalize(acc, C, H, vec_sums + b * H, biases + b * H, eps);
    probs[t] = p;
    if (keep) keep[t] = (p > threshold || is_prefix(positions, t, num_prefix)) ? 1 : 0;
  }
}

__global__ void topk_kernel(const float* scores, int64_t T_, const int32_t* offsets, int64_t B,
                            const int32_t* positions, double level, int num_prefix, uint8_t* keep) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= T_) return;
  const int64_t b = find_sequence(offsets, B, t);
  const int64_t begin = offsets[b], end = offsets[b + 1];
  const int64_t k = level_keep_count(count_patches(positions, begin, end, num_prefix), level);
  keep[t] = topk_keep_token(scores, positions, begin, end, t, k, num_prefix);
}

__global__ void survive_kernel(const uint8_t* keep, const int32_t* positions, int64_t T_,
                               int num_prefix, int32_t* flags) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < T_) flags[t] = survives(keep, positions, t, num_prefix);
}

__global__ void offsets_kernel(const int32_t* scan, const int32_t* flags, int64_t T_,
                               const int32_t* offsets, int64_t B, int32_t* new_offsets) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b > B) return;
  const int32_t total = T_ > 0 ? scan[T_ - 1] + flags[T_ - 1] : 0;
  new_offsets[b] = compacted_offset(scan, T_, total, offsets[b]);
}

// One warp per row.
__global__ void gather_kernel(const char* tokens, size_t row_bytes, const int32_t* positions,
                              const uint8_t* keep, const int32_t* scan, int64_t T_, int num_prefix,
                              char* out, int32_t* out_positions) {
  const int64_t t = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (t >= T_ || !survives(keep, positions, t, num_prefix)) return;
  const int64_t d = scan[t];
  copy_row(out + d * row_bytes, tokens + t * row_bytes, row_bytes, lane, kWarp);
  if (lane == 0) out_positions[d] = positions[t];
}

size_t cub_scan_bytes(int64_t T) {
  size_t bytes = 0;
  cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<const int32_t*>(nullptr),
                                static_cast<int32_t*>(nullptr), T);
  return bytes;
}

}  // namespace

int interpreter_scores_cuda(const void* tokens, DType dtype, int64_t T, int64_t C,
                             const int32_t* offsets, int64_t B, const int32_t* positions,
                             const float* vecs, const float* vec_sums, const float* biases, int H,
                             float eps, float threshold, int num_prefix, float* probs,
                             uint8_t* keep, void* stream) {
  if (T == 0) return 0;
  const unsigned grid = blocks_for(T * kWarp, kThreads);
#define IARED_LAUNCH(TYPE)                                                                     \
  scores_kernel<TYPE><<<grid, kThreads, 0, as_stream(stream)>>>(                               \
      static_cast<const TYPE*>(tokens), T, C, offsets, B, positions, vecs, vec_sums, biases, H, \
      eps, threshold, num_prefix, probs, keep)
  switch (dtype) {
    case DType::kFloat32: IARED_LAUNCH(float); break;
    case DType::kFloat16: IARED_LAUNCH(half_bits); break;
    case DType::kBFloat16: IARED_LAUNCH(bf16_bits); break;
  }
#undef IARED_LAUNCH
  return launched();
}

int topk_keep_cuda(const float* scores, int64_t T, const int32_t* offsets, int64_t B,
                   const int32_t* positions, double level, int num_prefix, uint8_t* keep,
                   void* stream) {
  if (T == 0) return 0;
  topk_kernel<<<blocks_for(T, kThreads), kThreads, 0, as_stream(stream)>>>(
      scores, T, offsets, B, positions, level, num_prefix, keep);
  return launched();
}

size_t compact_plan_workspace_cuda(int64_t T) {
  // survival flags [T] int32, then CUB's temporary storage (256-byte aligned)
  return ((size_t(T) * sizeof(int32_t) + 255) / 256) * 256 + cub_scan_bytes(T);
}

int compact_plan_cuda(const uint8_t* keep, const int32_t* positions, int64_t T,
                      const int32_t* offsets, int64_t B, int num_prefix, int32_t* scan,
                      int32_t* new_offsets, void* workspace, size_t workspace_bytes,
                      void* stream) {
  cudaStream_t s = as_stream(stream);
  int32_t* flags = static_cast<int32_t*>(workspace);
  const size_t flag_bytes = ((size_t(T) * sizeof(int32_t) + 255) / 256) * 256;
  if (T > 0) {
    survive_kernel<<<blocks_for(T, kThreads), kThreads, 0, s>>>(keep, positions, T, num_prefix, flags);
    if (int err = launched()) return err;
    size_t temp = workspace_bytes - flag_bytes;
    cudaError_t scanned =
        cub::DeviceScan::ExclusiveSum(static_cast<char*>(workspace) + flag_bytes, temp, flags, scan, T, s);
    if (scanned != cudaSuccess) return int(scanned);
  }
  offsets_kernel<<<blocks_for(B + 1, kThreads), kThreads, 0, s>>>(scan, flags, T, offsets, B, new_offsets);
  return launched();
}

int compact_gather_cuda(const void* tokens, size_t row_bytes, const int32_t* positions,
                        const uint8_t* keep, const int32_t* scan, int64_t T, int num_prefix,
                        void* out_tokens, int32_t* out_positions, void* stream) {
  if (T == 0) return 0;
  gather_kernel<<<blocks_for(T * kWarp, kThreads), kThreads, 0, as_stream(stream)>>>(
      static_cast<const char*>(tokens), row_bytes, positions, keep, scan, T, num_prefix,
      static_cast<char*>(out_tokens), out_positions);
  return launched();
}

}  // namespace iared
