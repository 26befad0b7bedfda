// The per-element formulas of the SGLD ops, shared by the CPU and CUDA kernels so both devices
// evaluate the same float32 expression (builds disable FMA contraction: results match bit for bit).
#pragma once

#include "philox.h"

namespace gedi_fast {

// clamp(x - step_size * grad + noise_std * xi, lo, hi); a NaN stays NaN, as in torch.clamp.
GEDI_HD float sgld_update(float x, float grad, float step_size, float noise_std, float xi, float lo,
                          float hi) {
  float v = x - step_size * grad;
  v = v + noise_std * xi;
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// Uniform in [low, high) from one Philox word; rounding can never reach `high`.
GEDI_HD float uniform_between(uint32_t word, float low, float high) {
  const float v = low + (high - low) * uniform_closed_open(word);
  return v < high ? v : low;
}

// Whether buffer-draw output row `row` is re-initialised (one word of the row stream per row).
GEDI_HD bool row_reinitialised(uint64_t seed, uint64_t offset, uint64_t row, float reinit_prob) {
  const Philox4 w = philox_block(seed, offset, kRowStreamBit | (row >> 2));
  return uniform_closed_open(w.v[row & 3]) < reinit_prob;
}

}  // namespace gedi_fast
