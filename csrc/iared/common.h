// Shared by the CPU and CUDA kernels: host/device qualifiers and 16-bit float loads.
// No libtorch here: this header is part of the standalone C++ library.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define IARED_HD __host__ __device__ __forceinline__
#else
#define IARED_HD inline
#endif

// Vectorise a float reduction on the host compiler (needs -fopenmp or -fopenmp-simd); the device
// compiler ignores it.
#if !defined(__CUDA_ARCH__) && defined(_OPENMP)
#define IARED_PRAGMA(x) _Pragma(#x)
#define IARED_SIMD_SUM(var) IARED_PRAGMA(omp simd reduction(+ : var))
#else
#define IARED_SIMD_SUM(var)
#endif

namespace iared {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline size_t dtype_size(DType dt) { return dt == DType::kFloat32 ? 4 : 2; }

// Storage tags for 16-bit floats: the kernels read raw bits and accumulate in float32.
struct half_bits { uint16_t bits; };
struct bf16_bits { uint16_t bits; };

IARED_HD float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

IARED_HD float to_float(float v) { return v; }

IARED_HD float to_float(bf16_bits v) { return bits_to_float(uint32_t(v.bits) << 16); }

// IEEE binary16 -> binary32, exact for normals, subnormals, inf and NaN.
IARED_HD float to_float(half_bits v) {
  const uint32_t sign = uint32_t(v.bits & 0x8000u) << 16;
  const uint32_t exp = (v.bits >> 10) & 0x1fu;
  uint32_t mant = v.bits & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mant << 13));
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_to_float(sign);
  // subnormal: value = mant * 2^-24
  const float mag = float(mant) * 5.9604644775390625e-8f;
  return sign ? -mag : mag;
}

// Index of the sequence that owns packed row t: the last b with offsets[b] <= t (empty
// sequences are skipped because offsets[b] == offsets[b+1]).
IARED_HD int64_t find_sequence(const int32_t* offsets, int64_t B, int64_t t) {
  int64_t lo = 0, hi = B;  // answer in [lo, hi)
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (offsets[mid] <= t) lo = mid; else hi = mid;
  }
  return lo;
}

}  // namespace iared
