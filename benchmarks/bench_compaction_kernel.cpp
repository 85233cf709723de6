// The compaction kernel alone (no Python, no torch, no dispatcher), against a contiguous copy of
// the kept bytes: what the CPU kernel costs once every call overhead is gone, and so how close any
// caller can get to issue 3's "50% of memcpy bandwidth". DeiT-S inputs (N = 197, C = 384, fp32),
// random keep flags, reused output buffers, medians.
//   cmake -S . -B build/cmake && cmake --build build/cmake --target bench_compaction_kernel
//   OMP_NUM_THREADS=2 build/cmake/bench_compaction_kernel
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "iared/ops.h"

namespace {

template <typename F>
double median_us(F&& fn, int repeats) {
  for (int i = 0; i < 20; ++i) fn();
  std::vector<double> t(repeats);
  for (int i = 0; i < repeats; ++i) {
    const auto a = std::chrono::steady_clock::now();
    fn();
    t[i] = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - a).count();
  }
  std::nth_element(t.begin(), t.begin() + repeats / 2, t.end());
  return t[repeats / 2];
}

// memcpy split across the threads above 1 MB: the rule the kernel itself follows.
void copy_bytes(char* dst, const char* src, size_t n) {
#ifdef _OPENMP
  if (n >= (size_t(1) << 20) && omp_get_max_threads() > 1) {
#pragma omp parallel
    {
      const size_t nt = omp_get_num_threads(), i = omp_get_thread_num();
      const size_t a = n * i / nt, b = n * (i + 1) / nt;
      std::memcpy(dst + a, src + a, b - a);
    }
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

}  // namespace

int main() {
  const int64_t N = 197, C = 384;
  const size_t row = size_t(C) * sizeof(float);
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> u(0.f, 1.f);
#ifdef _OPENMP
  std::printf("# %d threads (OMP_NUM_THREADS), N=%lld, C=%lld, float32, medians\n", omp_get_max_threads(),
              (long long)N, (long long)C);
#endif
  std::printf("| B | keep | kernel µs (plan + gather) | memcpy of kept bytes µs | %% of memcpy bandwidth |\n");
  std::printf("|---|---|---|---|---|\n");
  for (int64_t B : {1, 8, 64}) {
    const int64_t T = B * N;
    std::vector<float> tokens(static_cast<size_t>(T * C));
    for (auto& x : tokens) x = u(rng);
    std::vector<int32_t> offsets(static_cast<size_t>(B + 1)), positions(static_cast<size_t>(T)), scan(static_cast<size_t>(T)), new_offsets(static_cast<size_t>(B + 1));
    for (int64_t b = 0; b <= B; ++b) offsets[size_t(b)] = int32_t(b * N);
    for (int64_t t = 0; t < T; ++t) positions[size_t(t)] = int32_t(t % N);
    std::vector<float> out(static_cast<size_t>(T * C)), src(static_cast<size_t>(T * C));
    std::vector<int32_t> out_pos(static_cast<size_t>(T));
    const int repeats = B == 64 ? 200 : 2000;
    for (float frac : {0.3f, 0.6f, 0.9f}) {
      std::vector<uint8_t> keep(static_cast<size_t>(T));
      for (auto& k : keep) k = u(rng) < frac;
      int64_t kept = 0;
      const double t_kernel = median_us([&] {
        kept = iared::compact_plan_cpu(keep.data(), positions.data(), T, offsets.data(), B, 1, scan.data(),
                                       new_offsets.data());
        iared::compact_gather_cpu(tokens.data(), row, positions.data(), keep.data(), scan.data(), T, 1, out.data(),
                                  out_pos.data());
      }, repeats);
      const size_t bytes = size_t(kept) * row;
      const double t_copy = median_us([&] {
        copy_bytes(reinterpret_cast<char*>(out.data()), reinterpret_cast<const char*>(src.data()), bytes);
      }, repeats);
      std::printf("| %lld | %.0f%% | %.2f | %.2f | %.0f%% |\n", (long long)B, 100 * frac, t_kernel, t_copy,
                  100 * t_copy / t_kernel);
    }
  }
  return 0;
}
