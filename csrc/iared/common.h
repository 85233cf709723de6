// Shared by the CPU and CUDA kernels: host/device qualifiers and 16-bit float loads.
// No libtorch here: this header is part of the standalone C++ library.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define IARED_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// always_inline: so the host ISA clones (IARED_CPU_CLONES) compile these for their own ISA
#define IARED_HD inline __attribute__((always_inline))
#else
#define IARED_HD inline
#endif

// Vectorise a float reduction on the host compiler (needs -fopenmp or -fopenmp-simd); the device
// compiler ignores it.
#define IARED_PRAGMA(x) _Pragma(#x)
#if !defined(__CUDA_ARCH__) && defined(__GNUC__) && !defined(__clang__)
#define IARED_SIMD_SUM(...) IARED_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#else
#define IARED_SIMD_SUM(...)
#endif

// Host kernels are compiled for AVX-512 and AVX2+FMA besides the baseline, picked at run time
// (GCC/Clang function multi-versioning); portable builds stay portable.
#if !defined(__CUDACC__) && defined(__x86_64__) && defined(__GNUC__) && !defined(IARED_NO_CLONES)
#define IARED_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define IARED_CPU_CLONES
#endif

namespace iared {

// A pack of W floats: a GCC vector on the host (so the accumulators live in SIMD registers
// whatever the compiler's loop analysis makes of them), a plain float where W == 1 (the device).
template <int W> struct FloatPack { typedef float type __attribute__((vector_size(sizeof(float) * W))); };
template <> struct FloatPack<1> { typedef float type; };

IARED_HD float pack_lane(float v, int) { return v; }
template <typename V> IARED_HD float pack_lane(const V& v, int l) { return v[l]; }

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
