// iared: the public C++ API of the packed-token kernels (no libtorch, no Python).
//
// Layout: tokens [T, C] row-major (all kept tokens of all images back to back), offsets [B+1]
// int32 cumulative counts, positions [T] int32 (0 = class token, < num_prefix = prefix tokens that
// are never dropped, then the patch grid). CUDA functions take device pointers and a cudaStream_t
// passed as void*, and never synchronise; the caller owns every buffer.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common.h"

namespace iared {

// ---- CPU (OpenMP over tokens) ----------------------------------------------------------------

// probs[t] = mean_h sigmoid(vecs[b,h] . LN(tokens[t]) + biases[b,h]) for the image b owning row t;
// vec_sums[b,h] = sum_c vecs[b,h,c]. If keep != nullptr: keep[t] = probs[t] > threshold, or 1 for
// prefix tokens (positions required then). H <= kMaxHeads (16).
void interpreter_scores_cpu(const void* tokens, DType dtype, int64_t T, int64_t C,
                            const int32_t* offsets, int64_t B, const int32_t* positions,
                            const float* vecs, const float* vec_sums, const float* biases, int H,
                            float eps, float threshold, int num_prefix, float* probs, uint8_t* keep);

// The interpreter's class-token query, folded (iared_edge/interpreter.py): per image b,
// q = wq LN(cls[b]) + bq (LN without affine), then per head h
// vecs[b,h,:] = sum_d q[h*D+d] wk[h*D+d,:] and biases[b,h] = sum_d q[h*D+d] bk[h*D+d].
// cls [B, C]; wq, wk [H*D, C] row-major; bq, bk [H*D]; out vecs [B, H, C], biases [B, H].
// At batch 1 the cost is reading wq and wk (cold: the blocks' weights evicted them), so each
// is streamed once for all B images, by all threads.
void interpreter_fold_cpu(const float* cls, int64_t B, int64_t C, const float* wq, const float* bq,
                          const float* wk, const float* bk, int H, int64_t D, float eps, float* vecs,
                          float* biases);

// keep[t] = 1 for the top ceil(level * n_b) patch tokens of each image by score (earlier wins ties)
// and for prefix tokens, else 0.
void topk_keep_cpu(const float* scores, int64_t T, const int32_t* offsets, int64_t B,
                   const int32_t* positions, double level, int num_prefix, uint8_t* keep);

// Compaction, two calls so the caller can allocate the output in between.
// plan: scan[t] = survivors before t (dest row), new_offsets[B+1]; returns T'.
int64_t compact_plan_cpu(const uint8_t* keep, const int32_t* positions, int64_t T,
                         const int32_t* offsets, int64_t B, int num_prefix, int32_t* scan,
                         int32_t* new_offsets);
// gather: surviving rows (row_bytes each) and their positions into out_tokens [T'] / out_positions.
void compact_gather_cpu(const void* tokens, size_t row_bytes, const int32_t* positions,
                        const uint8_t* keep, const int32_t* scan, int64_t T, int num_prefix,
                        void* out_tokens, int32_t* out_positions);

// ---- CUDA (compiled when the library is built with CUDA) -------------------------------------
// Each returns the first CUDA error of its launches (a cudaError_t as int; 0 = cudaSuccess), so a
// caller sees "no kernel image for this GPU" or a bad launch instead of uninitialised output.

int interpreter_scores_cuda(const void* tokens, DType dtype, int64_t T, int64_t C,
                             const int32_t* offsets, int64_t B, const int32_t* positions,
                             const float* vecs, const float* vec_sums, const float* biases, int H,
                             float eps, float threshold, int num_prefix, float* probs,
                             uint8_t* keep, void* stream);

int topk_keep_cuda(const float* scores, int64_t T, const int32_t* offsets, int64_t B,
                    const int32_t* positions, double level, int num_prefix, uint8_t* keep,
                    void* stream);

// Bytes of device workspace compact_plan_cuda needs for T rows.
size_t compact_plan_workspace_cuda(int64_t T);
// Writes scan [T] and new_offsets [B+1] on the device; T' = new_offsets[B] (read it back, then
// allocate and gather; this is the one host synchronisation of a compaction).
int compact_plan_cuda(const uint8_t* keep, const int32_t* positions, int64_t T,
                       const int32_t* offsets, int64_t B, int num_prefix, int32_t* scan,
                       int32_t* new_offsets, void* workspace, size_t workspace_bytes, void* stream);
int compact_gather_cuda(const void* tokens, size_t row_bytes, const int32_t* positions,
                         const uint8_t* keep, const int32_t* scan, int64_t T, int num_prefix,
                         void* out_tokens, int32_t* out_positions, void* stream);

}  // namespace iared
