// Counter-based random numbers shared by the CPU and CUDA kernels.
//
// Every random number is a pure function of (seed, offset, element index), so the CPU and CUDA
// kernels draw the same values whatever the thread count or launch shape, and a CUDA graph replay
// draws fresh noise by reading a new offset from device memory.  Philox4x32-10 (Salmon et al. 2011)
// gives four 32-bit words per counter; Box-Muller turns them into four standard normals.  log and
// sin/cos are branch-free polynomials (Cephes) so that the CPU loop vectorises and both devices
// evaluate the same formula.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define GEDI_HD __host__ __device__ __forceinline__
#define GEDI_UNROLL _Pragma("unroll")
#else
#define GEDI_HD inline
#define GEDI_UNROLL _Pragma("GCC unroll 16")
#endif

namespace gedi_fast {

// The top bit of the 64-bit counter separates per-row draws from per-element draws, so one
// (seed, offset) pair can feed both without reusing a counter.
constexpr uint64_t kRowStreamBit = uint64_t(1) << 63;

struct Philox4 {
  uint32_t v[4];
};

GEDI_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint32_t>(__float_as_uint(f));
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

GEDI_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1).
GEDI_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                              uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  GEDI_UNROLL
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c0 = n0;
    c1 = static_cast<uint32_t>(p1);
    c2 = n2;
    c3 = static_cast<uint32_t>(p0);
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The four words for counter `group` (the element index / 4, or a row index with kRowStreamBit set).
GEDI_HD Philox4 philox_block(uint64_t seed, uint64_t offset, uint64_t group) {
  return philox4x32_10(static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32),
                       static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Uniform in [0, 1) on a 2^-24 grid.
GEDI_HD float uniform_closed_open(uint32_t word) {
  return static_cast<float>(word >> 8) * 5.9604644775390625e-08f;
}

// Uniform in (0, 1] on a 2^-24 grid: never 0, so its log is finite.
GEDI_HD float uniform_open_closed(uint32_t word) {
  return static_cast<float>((word >> 8) + 1u) * 5.9604644775390625e-08f;
}

// Natural log for x in [2^-24, 1]; Cephes logf, no branches.
GEDI_HD float log_unit(float x) {
  const uint32_t bits = float_bits(x);
  int exponent = static_cast<int>((bits >> 23) & 0xffu) - 126;
  float m = bits_float((bits & 0x807fffffu) | 0x3f000000u);  // x = m * 2^exponent, m in [0.5, 1)
  const bool below_sqrt_half = m < 0.70710678118654752f;
  const float doubled = m + m - 1.0f;
  const float plain = m - 1.0f;
  exponent -= static_cast<int>(below_sqrt_half);
  m = below_sqrt_half ? doubled : plain;
  const float e = static_cast<float>(exponent);
  const float m2 = m * m;
  float poly = 7.0376836292e-2f;
  poly = poly * m - 1.1514610310e-1f;
  poly = poly * m + 1.1676998740e-1f;
  poly = poly * m - 1.2420140846e-1f;
  poly = poly * m + 1.4249322787e-1f;
  poly = poly * m - 1.6668057665e-1f;
  poly = poly * m + 2.0000714765e-1f;
  poly = poly * m - 2.4999993993e-1f;
  poly = poly * m + 3.3333331174e-1f;
  float y = poly * m * m2;
  y += -2.12194440e-4f * e;
  y += -0.5f * m2;
  return m + y + 0.693359375f * e;
}

// sin and cos of 2*pi*u for u in [0, 1): quadrant from 4u, Cephes polynomials on [-pi/4, pi/4].
GEDI_HD void sincos_turns(float u, float* sin_out, float* cos_out) {
  const float quarter_turns = u * 4.0f;
  const int quadrant = static_cast<int>(quarter_turns + 0.5f);
  const float r = (quarter_turns - static_cast<float>(quadrant)) * 1.57079632679489662f;
  const float r2 = r * r;
  const float s = ((-1.9515295891e-4f * r2 + 8.3321608736e-3f) * r2 - 1.6666654611e-1f) * r2 * r + r;
  const float c =
      ((2.443315711809948e-5f * r2 - 1.388731625493765e-3f) * r2 + 4.166664568298827e-2f) * r2 * r2 -
      0.5f * r2 + 1.0f;
  const int q = quadrant & 3;
  const float sin_abs = (q & 1) ? c : s;
  const float cos_abs = (q & 1) ? s : c;
  *sin_out = (q & 2) ? -sin_abs : sin_abs;
  *cos_out = ((q + 1) & 2) ? -cos_abs : cos_abs;
}

// Four standard normals from one Philox block (Box-Muller on words (0, 1) and (2, 3)).
struct Normal4 {
  float v[4];
};

GEDI_HD Normal4 box_muller4(Philox4 w) {
  const float radius_a = sqrtf(-2.0f * log_unit(uniform_open_closed(w.v[0])));
  const float radius_b = sqrtf(-2.0f * log_unit(uniform_open_closed(w.v[2])));
  float sa, ca, sb, cb;
  sincos_turns(uniform_closed_open(w.v[1]), &sa, &ca);
  sincos_turns(uniform_closed_open(w.v[3]), &sb, &cb);
  return Normal4{{radius_a * ca, radius_a * sa, radius_b * cb, radius_b * sb}};
}

}  // namespace gedi_fast
