// iared_edge._C: torch tensors in, checks, then the raw-pointer kernels of csrc/.
// Registered with torch.library as torch.ops.iared.*, so PyTorch sees ordinary ops.
#include <torch/extension.h>
#include <torch/library.h>

#include <vector>

#ifdef WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "iared/ops.h"
#include "iared/scoring.h"

namespace {

iared::DType token_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return iared::DType::kFloat32;
    case at::kHalf: return iared::DType::kFloat16;
    case at::kBFloat16: return iared::DType::kBFloat16;
    default: TORCH_CHECK(false, "iared: tokens dtype ", t.scalar_type(), " not supported (float32, float16, bfloat16)");
  }
}

void check(const at::Tensor& t, const char* name, at::ScalarType dtype, const at::Device& device) {
  TORCH_CHECK(t.scalar_type() == dtype, "iared: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == device, "iared: ", name, " is on ", t.device(), ", expected ", device);
  TORCH_CHECK(t.is_contiguous(), "iared: ", name, " must be contiguous");
}

// The kernels take raw pointers: a tensor on a device this build has no kernels for is refused
// here, never read as host memory (a build without CUDA given CUDA tensors, a meta tensor).
void check_device(const at::Tensor& t) {
#ifdef WITH_CUDA
  TORCH_CHECK_VALUE(t.is_cpu() || t.is_cuda(), "iared: tensors on ", t.device(),
                    " are not supported: the iared ops run on cpu and cuda");
#else
  TORCH_CHECK_VALUE(t.is_cpu(), "iared: tensors on ", t.device(), ": this iared_edge._C was built without CUDA ",
                    "(CPU kernels only); rebuild it where nvcc is found, or call iared_edge.ops, which falls back ",
                    "to PyTorch");
#endif
}

#ifdef WITH_CUDA
// The csrc launchers return their first CUDA error (cudaGetLastError right after each launch, and
// CUB's own return): the launch check, raised here as PyTorch raises its own.
#define IARED_CUDA_CHECK(call) C10_CUDA_CHECK(static_cast<cudaError_t>(call))
#endif

void check_packed(const at::Tensor& tokens, const at::Tensor& offsets, const at::Tensor& positions) {
  check_device(tokens);
  TORCH_CHECK(tokens.dim() == 2, "iared: tokens must be [T, C], got ", tokens.sizes());
  TORCH_CHECK(tokens.is_contiguous(), "iared: tokens must be contiguous");
  token_dtype(tokens);
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() >= 1, "iared: offsets must be [B+1]");
  check(offsets, "offsets", at::kInt, tokens.device());
  TORCH_CHECK(tokens.size(0) <= INT32_MAX, "iared: more than 2^31 tokens");
  if (offsets.is_cpu()) {  // kernels index rows by offsets: bad values would read out of bounds
    // (device offsets are not read back: that would cost a sync per op)
    const int32_t* o = offsets.data_ptr<int32_t>();
    const int64_t B = offsets.numel() - 1;
    bool ok = o[0] == 0 && o[B] == tokens.size(0);
    for (int64_t b = 0; ok && b < B; ++b) ok = o[b] <= o[b + 1];
    TORCH_CHECK_VALUE(ok, "iared: offsets must start at 0, never decrease and end at T=", tokens.size(0),
                      ", got ", offsets.numel(), " values from ", o[0], " to ", o[B]);
  }
  if (positions.numel() > 0 || tokens.size(0) == 0) {
    TORCH_CHECK(positions.dim() == 1 && positions.size(0) == tokens.size(0),
                "iared: positions must be [T=", tokens.size(0), "], got ", positions.sizes());
    check(positions, "positions", at::kInt, tokens.device());
  }
}

#ifdef WITH_CUDA
void* stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }
#endif

// sums[i] = sum_c v[i, c]: the scoring's per-head vector sums, one order on every CPU path.
void sum_rows(const float* v, int64_t rows, int64_t C, float* sums) {
  for (int64_t i = 0; i < rows; ++i) {
    float sum = 0.f;
    for (int64_t c = 0; c < C; ++c) sum += v[i * C + c];
    sums[i] = sum;
  }
}

at::Tensor head_sums(const at::Tensor& vecs) {  // vecs [B, H, C] float32 contiguous, on the CPU
  auto sums = at::empty({vecs.size(0), vecs.size(1)}, vecs.options());
  sum_rows(vecs.data_ptr<float>(), vecs.size(0) * vecs.size(1), vecs.size(2), sums.data_ptr<float>());
  return sums;
}

std::tuple<at::Tensor, at::Tensor> interpreter_scores(const at::Tensor& tokens, const at::Tensor& offsets,
                                                      const at::Tensor& positions, const at::Tensor& vecs,
                                                      const at::Tensor& biases, double threshold,
                                                      int64_t num_prefix, double eps, bool emit_keep) {
  check_packed(tokens, offsets, positions);
  const int64_t B = offsets.numel() - 1, T = tokens.size(0), C = tokens.size(1);
  TORCH_CHECK(vecs.dim() == 3 && vecs.size(0) == B && vecs.size(2) == C,
              "iared: vecs must be [B=", B, ", H, C=", C, "], got ", vecs.sizes());
  const int64_t H = vecs.size(1);
  TORCH_CHECK(H >= 1 && H <= iared::kMaxHeads, "iared: 1..", iared::kMaxHeads, " heads supported, got ", H);
  TORCH_CHECK(biases.dim() == 2 && biases.size(0) == B && biases.size(1) == H, "iared: biases must be [B, H]");
  check(vecs, "vecs", at::kFloat, tokens.device());
  check(biases, "biases", at::kFloat, tokens.device());
  TORCH_CHECK(!emit_keep || positions.numel() == T, "iared: emitting keep flags needs positions");
  TORCH_CHECK(C > 0 || T == 0, "iared: C must be positive");
  auto probs = at::empty({T}, tokens.options().dtype(at::kFloat));
  auto keep = at::empty({emit_keep ? T : 0}, tokens.options().dtype(at::kBool));
  // on the CPU the per-head sums are a host loop, not an ATen op (whose dispatch costs more at batch 1)
  auto vec_sums = tokens.is_cuda() ? vecs.sum(-1).contiguous() : head_sums(vecs);
  const int32_t* pos = positions.numel() ? positions.data_ptr<int32_t>() : nullptr;
  uint8_t* keep_ptr = emit_keep ? reinterpret_cast<uint8_t*>(keep.data_ptr<bool>()) : nullptr;
  if (tokens.is_cuda()) {
#ifdef WITH_CUDA
    c10::cuda::CUDAGuard guard(tokens.device());
    IARED_CUDA_CHECK(iared::interpreter_scores_cuda(
        tokens.data_ptr(), token_dtype(tokens), T, C, offsets.data_ptr<int32_t>(), B, pos, vecs.data_ptr<float>(),
        vec_sums.data_ptr<float>(), biases.data_ptr<float>(), int(H), float(eps), float(threshold), int(num_prefix),
        probs.data_ptr<float>(), keep_ptr, stream_of(tokens)));
#endif
  } else {
    iared::interpreter_scores_cpu(tokens.data_ptr(), token_dtype(tokens), T, C, offsets.data_ptr<int32_t>(), B, pos,
                                  vecs.data_ptr<float>(), vec_sums.data_ptr<float>(), biases.data_ptr<float>(),
                                  int(H), float(eps), float(threshold), int(num_prefix), probs.data_ptr<float>(),
                                  keep_ptr);
  }
  return {probs, keep};
}

// The interpreter's folded-query weights (see interpreter_fold): wq, wk [H*D, C], bq, bk [H*D].
void check_fold_weights(int64_t C, const at::Tensor& wq, const at::Tensor& bq, const at::Tensor& wk,
                        const at::Tensor& bk, int64_t num_heads, const at::Device& device) {
  TORCH_CHECK(num_heads >= 1 && num_heads <= iared::kMaxHeads && wq.dim() == 2 && wq.size(1) == C &&
                  wq.size(0) % num_heads == 0,
              "iared: wq must be [H*D, C=", C, "] with H=", num_heads, " (1..", iared::kMaxHeads, "), got ",
              wq.sizes());
  const int64_t Q = wq.size(0);
  TORCH_CHECK(wk.sizes() == wq.sizes(), "iared: wk must be ", wq.sizes(), " as wq, got ", wk.sizes());
  TORCH_CHECK(bq.dim() == 1 && bq.size(0) == Q && bk.dim() == 1 && bk.size(0) == Q, "iared: bq and bk must be [", Q,
              "], got ", bq.sizes(), " and ", bk.sizes());
  check(wq, "wq", at::kFloat, device);
  check(bq, "bq", at::kFloat, device);
  check(wk, "wk", at::kFloat, device);
  check(bk, "bk", at::kFloat, device);
}

// CPU only: on a GPU the fold is two small GEMMs that cuBLAS runs well (iared_edge.ops routes it).
std::tuple<at::Tensor, at::Tensor> interpreter_fold(const at::Tensor& cls, const at::Tensor& wq, const at::Tensor& bq,
                                                    const at::Tensor& wk, const at::Tensor& bk, int64_t num_heads,
                                                    double eps) {
  TORCH_CHECK_VALUE(cls.is_cpu(), "iared: interpreter_fold runs on the CPU, got cls on ", cls.device());
  TORCH_CHECK(cls.dim() == 2, "iared: cls must be [B, C], got ", cls.sizes());
  const int64_t B = cls.size(0), C = cls.size(1);
  check(cls, "cls", at::kFloat, cls.device());
  check_fold_weights(C, wq, bq, wk, bk, num_heads, cls.device());
  const int64_t Q = wq.size(0);
  auto vecs = at::empty({B, num_heads, C}, cls.options());
  auto biases = at::empty({B, num_heads}, cls.options());
  iared::interpreter_fold_cpu(cls.data_ptr<float>(), B, C, wq.data_ptr<float>(), bq.data_ptr<float>(),
                              wk.data_ptr<float>(), bk.data_ptr<float>(), int(num_heads), Q / num_heads, float(eps),
                              vecs.data_ptr<float>(), biases.data_ptr<float>());
  return {vecs, biases};
}

at::Tensor topk_keep(const at::Tensor& scores, const at::Tensor& offsets, const at::Tensor& positions,
                     double level, int64_t num_prefix) {
  TORCH_CHECK(scores.dim() == 1, "iared: scores must be [T]");
  check(scores, "scores", at::kFloat, scores.device());
  check_packed(scores.view({-1, 1}), offsets, positions);
  TORCH_CHECK(positions.numel() == scores.numel(), "iared: topk_keep needs positions [T]");
  TORCH_CHECK(level >= 0.0 && level <= 1.0, "iared: level must be in [0, 1], got ", level);
  const int64_t T = scores.numel(), B = offsets.numel() - 1;
  auto keep = at::empty({T}, scores.options().dtype(at::kBool));
  auto* keep_ptr = reinterpret_cast<uint8_t*>(keep.data_ptr<bool>());
  if (scores.is_cuda()) {
#ifdef WITH_CUDA
    c10::cuda::CUDAGuard guard(scores.device());
    IARED_CUDA_CHECK(iared::topk_keep_cuda(scores.data_ptr<float>(), T, offsets.data_ptr<int32_t>(), B,
                                           positions.data_ptr<int32_t>(), level, int(num_prefix), keep_ptr,
                                           stream_of(scores)));
#endif
  } else {
    iared::topk_keep_cpu(scores.data_ptr<float>(), T, offsets.data_ptr<int32_t>(), B, positions.data_ptr<int32_t>(),
                         level, int(num_prefix), keep_ptr);
  }
  return keep;
}

// The kept rows go to `out` (rows 0..T'-1) when given, else to a new tensor.
at::Tensor output_rows(const at::Tensor& tokens, const std::optional<at::Tensor>& out, int64_t kept) {
  if (!out.has_value()) return at::empty({kept, tokens.size(1)}, tokens.options());
  const at::Tensor& o = *out;
  TORCH_CHECK(o.dim() == 2 && o.size(1) == tokens.size(1) && o.size(0) >= kept,
              "iared: out must be [>= ", kept, ", ", tokens.size(1), "], got ", o.sizes());
  check(o, "out", tokens.scalar_type(), tokens.device());
  return o.narrow(0, 0, kept);
}

// The CPU compaction (plan, then the output allocated, then the gather), for compact and select_stage.
std::tuple<at::Tensor, at::Tensor, at::Tensor> compact_cpu(const at::Tensor& tokens, const at::Tensor& offsets,
                                                           const at::Tensor& positions, const uint8_t* keep,
                                                           int64_t num_prefix, const std::optional<at::Tensor>& out_buffer) {
  const int64_t T = tokens.size(0), B = offsets.numel() - 1;
  auto new_offsets = at::empty({B + 1}, offsets.options());
  // The scan is host scratch: a per-thread buffer that grows, not an allocation per call.
  thread_local std::vector<int32_t> scan;
  scan.resize(size_t(T));
  const int64_t kept = iared::compact_plan_cpu(keep, positions.data_ptr<int32_t>(), T, offsets.data_ptr<int32_t>(), B,
                                               int(num_prefix), scan.data(), new_offsets.data_ptr<int32_t>());
  auto out = output_rows(tokens, out_buffer, kept);
  auto out_pos = at::empty({kept}, positions.options());
  iared::compact_gather_cpu(tokens.data_ptr(), size_t(tokens.size(1)) * tokens.element_size(),
                            positions.data_ptr<int32_t>(), keep, scan.data(), T, int(num_prefix), out.data_ptr(),
                            out_pos.data_ptr<int32_t>());
  return {out, new_offsets, out_pos};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> compact(const at::Tensor& tokens, const at::Tensor& offsets,
                                                       const at::Tensor& positions, const at::Tensor& keep,
                                                       int64_t num_prefix, const std::optional<at::Tensor>& out_buffer) {
  check_packed(tokens, offsets, positions);
  TORCH_CHECK(positions.numel() == tokens.size(0), "iared: compact needs positions [T]");
  check(keep, "keep", at::kBool, tokens.device());
  TORCH_CHECK(keep.dim() == 1 && keep.size(0) == tokens.size(0), "iared: keep must be [T]");
  const auto* keep_ptr = reinterpret_cast<const uint8_t*>(keep.data_ptr<bool>());
  if (tokens.is_cuda()) {
#ifdef WITH_CUDA
    const int64_t T = tokens.size(0), B = offsets.numel() - 1;
    const size_t row_bytes = size_t(tokens.size(1)) * tokens.element_size();
    auto new_offsets = at::empty({B + 1}, offsets.options());
    auto scan = at::empty({T}, offsets.options());
    c10::cuda::CUDAGuard guard(tokens.device());
    void* stream = stream_of(tokens);
    const size_t ws_bytes = iared::compact_plan_workspace_cuda(T);
    auto ws = at::empty({int64_t(ws_bytes)}, tokens.options().dtype(at::kByte));
    IARED_CUDA_CHECK(iared::compact_plan_cuda(keep_ptr, positions.data_ptr<int32_t>(), T, offsets.data_ptr<int32_t>(),
                                              B, int(num_prefix), scan.data_ptr<int32_t>(),
                                              new_offsets.data_ptr<int32_t>(), ws.data_ptr(), ws_bytes, stream));
    const int64_t kept = new_offsets[B].item<int32_t>();  // the one sync: the output's size
    auto out = output_rows(tokens, out_buffer, kept);
    auto out_pos = at::empty({kept}, positions.options());
    IARED_CUDA_CHECK(iared::compact_gather_cuda(tokens.data_ptr(), row_bytes, positions.data_ptr<int32_t>(), keep_ptr,
                                                scan.data_ptr<int32_t>(), T, int(num_prefix), out.data_ptr(),
                                                out_pos.data_ptr<int32_t>(), stream));
    return {out, new_offsets, out_pos};
#endif
  }
  return compact_cpu(tokens, offsets, positions, keep_ptr, num_prefix, out_buffer);
}

// One stage's selection on the CPU in one call: each image's class token (its first row), the
// folded query, the scores, the keep flags (top ceil(level * n) patches when level >= 0, else
// probability > threshold), the compaction. Returns (probs [T], tokens [T', C], offsets [B+1],
// positions [T']). At batch 1 the separate ops' calls and checks cost more than their work; on a
// GPU they run separately (iared_edge.ops.select_stage).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> select_stage(
    const at::Tensor& tokens, const at::Tensor& offsets, const at::Tensor& positions, const at::Tensor& wq,
    const at::Tensor& bq, const at::Tensor& wk, const at::Tensor& bk, int64_t num_heads, double eps, double level,
    double threshold, int64_t num_prefix) {
  TORCH_CHECK_VALUE(tokens.is_cpu(), "iared: select_stage runs on the CPU, got tokens on ", tokens.device());
  check_packed(tokens, offsets, positions);
  const int64_t T = tokens.size(0), C = tokens.size(1), B = offsets.numel() - 1;
  TORCH_CHECK(positions.numel() == T, "iared: select_stage needs positions [T]");
  TORCH_CHECK(C > 0 || T == 0, "iared: C must be positive");
  TORCH_CHECK(level <= 1.0, "iared: level must be in [0, 1] (or negative for a threshold), got ", level);
  check_fold_weights(C, wq, bq, wk, bk, num_heads, tokens.device());
  const int H = int(num_heads);
  const int64_t D = wq.size(0) / H;
  const iared::DType dtype = token_dtype(tokens);
  const int32_t* offs = offsets.data_ptr<int32_t>();
  const int32_t* pos = positions.data_ptr<int32_t>();
  // host scratch, per thread, grown not reallocated
  thread_local std::vector<float> cls, vecs, biases, sums;
  thread_local std::vector<uint8_t> keep;
  cls.assign(size_t(B * C), 0.f);
  vecs.resize(size_t(B * H * C));
  biases.resize(size_t(B * H));
  sums.resize(size_t(B * H));
  keep.resize(size_t(T));
  const auto* raw = static_cast<const char*>(tokens.data_ptr());
  for (int64_t b = 0; b < B; ++b) {
    if (offs[b] == offs[b + 1]) continue;  // an empty image: nothing of it is scored
    const char* row = raw + size_t(offs[b]) * size_t(C) * tokens.element_size();
    float* dst = cls.data() + b * C;
    for (int64_t c = 0; c < C; ++c) {
      dst[c] = dtype == iared::DType::kFloat32   ? reinterpret_cast<const float*>(row)[c]
               : dtype == iared::DType::kFloat16 ? iared::to_float(reinterpret_cast<const iared::half_bits*>(row)[c])
                                                 : iared::to_float(reinterpret_cast<const iared::bf16_bits*>(row)[c]);
    }
  }
  iared::interpreter_fold_cpu(cls.data(), B, C, wq.data_ptr<float>(), bq.data_ptr<float>(), wk.data_ptr<float>(),
                              bk.data_ptr<float>(), H, D, float(eps), vecs.data(), biases.data());
  sum_rows(vecs.data(), B * H, C, sums.data());
  const bool by_level = level >= 0.0;
  auto probs = at::empty({T}, tokens.options().dtype(at::kFloat));
  iared::interpreter_scores_cpu(tokens.data_ptr(), dtype, T, C, offs, B, pos, vecs.data(), sums.data(), biases.data(), H,
                                float(eps), float(threshold), int(num_prefix), probs.data_ptr<float>(),
                                by_level ? nullptr : keep.data());
  if (by_level) iared::topk_keep_cpu(probs.data_ptr<float>(), T, offs, B, pos, level, int(num_prefix), keep.data());
  auto [out, new_offsets, out_pos] = compact_cpu(tokens, offsets, positions, keep.data(), num_prefix, std::nullopt);
  return {probs, out, new_offsets, out_pos};
}

}  // namespace

TORCH_LIBRARY(iared, m) {
  m.def("interpreter_scores(Tensor tokens, Tensor offsets, Tensor positions, Tensor vecs, Tensor biases, "
        "float threshold, int num_prefix, float eps, bool emit_keep) -> (Tensor, Tensor)");
  m.def("interpreter_fold(Tensor cls, Tensor wq, Tensor bq, Tensor wk, Tensor bk, int num_heads, float eps) "
        "-> (Tensor, Tensor)");
  m.def("select_stage(Tensor tokens, Tensor offsets, Tensor positions, Tensor wq, Tensor bq, Tensor wk, Tensor bk, "
        "int num_heads, float eps, float level, float threshold, int num_prefix) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("topk_keep(Tensor scores, Tensor offsets, Tensor positions, float level, int num_prefix) -> Tensor");
  m.def("compact(Tensor tokens, Tensor offsets, Tensor positions, Tensor keep, int num_prefix, Tensor? out=None) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(iared, CPU, m) {
  m.impl("interpreter_scores", &interpreter_scores);
  m.impl("interpreter_fold", &interpreter_fold);
  m.impl("select_stage", &select_stage);
  m.impl("topk_keep", &topk_keep);
  m.impl("compact", &compact);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(iared, CUDA, m) {
  m.impl("interpreter_scores", &interpreter_scores);
  m.impl("topk_keep", &topk_keep);
  m.impl("compact", &compact);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "iared-edge kernels: the interpreter's folded query, fused interpreter scoring, top-k selection, token compaction, and all of one stage's selection in one call";
  // The same functions, callable without the dispatcher: iared_edge.ops uses these in eager mode
  // (a torch.ops call's argument boxing costs as much as a batch-1 compaction: docs/benchmarks.md, 'Ops (issue 3)') and
  // torch.ops.iared.* wherever PyTorch must see the op (tracing, torch.compile, tensor subclasses).
  // The GIL is released as torch.ops does, so other Python threads run meanwhile.
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("interpreter_scores", &interpreter_scores, nogil);
  m.def("interpreter_fold", &interpreter_fold, nogil);
  m.def("select_stage", &select_stage, nogil);
  m.def("topk_keep", &topk_keep, nogil);
  m.def("compact", &compact, nogil);
#ifdef WITH_CUDA
  m.def("built_with_cuda", [] { return true; });
#else
  m.def("built_with_cuda", [] { return false; });
#endif
}
