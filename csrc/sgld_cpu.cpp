// CPU kernels of gedi_fast::sgld_step_ and gedi_fast::buffer_draw.
//
// Work is split over threads in whole Philox groups (4 elements), so the noise an element gets
// depends only on its index, never on the thread count.  Normals are drawn a chunk at a time into
// a small float buffer by a loop the compiler vectorises (cloned for AVX2 / AVX-512 where the
// compiler supports function multi-versioning), then applied in one pass over x and grad.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>

#include "checks.h"
#include "sgld_math.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GEDI_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GEDI_VECTOR_CLONES
#endif

namespace gedi_fast {
namespace {

constexpr int64_t kGroupsPerChunk = 256;  // 1024 floats of noise on the stack per chunk
constexpr int64_t kGrainElements = 32768;  // per thread at least: a 64 x 2 draw is not worth waking a second thread

GEDI_VECTOR_CLONES void fill_normals(float* __restrict__ out, uint64_t first_group, int64_t groups,
                                     uint64_t seed, uint64_t offset) {
#pragma omp simd
  for (int64_t g = 0; g < groups; ++g) {
    const Normal4 n = box_muller4(philox_block(seed, offset, first_group + static_cast<uint64_t>(g)));
    out[4 * g + 0] = n.v[0];
    out[4 * g + 1] = n.v[1];
    out[4 * g + 2] = n.v[2];
    out[4 * g + 3] = n.v[3];
  }
}

uint64_t resolve_offset(int64_t offset, const c10::optional<at::Tensor>& device_offset) {
  const uint64_t base = static_cast<uint64_t>(offset);
  return device_offset.has_value() ? base + static_cast<uint64_t>(device_offset->item<int64_t>()) : base;
}

void sgld_step_cpu(at::Tensor x, const at::Tensor& grad, double step_size, double noise_std, int64_t seed,
                   int64_t offset, const c10::optional<at::Tensor>& device_offset,
                   c10::optional<double> clamp_min, c10::optional<double> clamp_max) {
  check_sgld_args(x, grad, device_offset);
  const int64_t numel = x.numel();
  if (numel == 0) return;
  const uint64_t key = static_cast<uint64_t>(seed);
  const uint64_t counter_offset = resolve_offset(offset, device_offset);
  const float step = static_cast<float>(step_size);
  const float noise = static_cast<float>(noise_std);
  const float lo = clamp_bound(clamp_min, -kInf);
  const float hi = clamp_bound(clamp_max, kInf);
  const int64_t groups = (numel + 3) / 4;
  GEDI_DISPATCH_SAMPLE_TYPES(x.scalar_type(), "sgld_step_cpu", [&] {
    scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    at::parallel_for(0, groups, kGroupsPerChunk, [&](int64_t begin, int64_t end) {
      float xi[4 * kGroupsPerChunk] = {};
      for (int64_t g0 = begin; g0 < end; g0 += kGroupsPerChunk) {
        const int64_t g1 = std::min(end, g0 + kGroupsPerChunk);
        if (noise != 0.0f) fill_normals(xi, static_cast<uint64_t>(g0), g1 - g0, key, counter_offset);
        const int64_t e0 = 4 * g0;
        const int64_t e1 = std::min(numel, 4 * g1);
        for (int64_t e = e0; e < e1; ++e) {
          xp[e] = static_cast<scalar_t>(sgld_update(static_cast<float>(xp[e]), static_cast<float>(gp[e]),
                                                    step, noise, xi[e - e0], lo, hi));
        }
      }
    });
  });
}

std::tuple<at::Tensor, at::Tensor> buffer_draw_cpu(const at::Tensor& buffer, const at::Tensor& indices,
                                                   double reinit_prob, double low, double high,
                                                   int64_t seed, int64_t offset,
                                                   const c10::optional<at::Tensor>& device_offset) {
  check_buffer_draw_args(buffer, indices, reinit_prob, low, high, device_offset);
  const int64_t rows = indices.size(0);
  const int64_t buffer_rows = buffer.size(0);
  const int64_t row_numel = buffer.numel() / buffer_rows;
  at::Tensor out, reinit;
  std::tie(out, reinit) = allocate_draw_outputs(buffer, indices);
  const uint64_t key = static_cast<uint64_t>(seed);
  const uint64_t counter_offset = resolve_offset(offset, device_offset);
  const float prob = static_cast<float>(reinit_prob);
  const float lo = static_cast<float>(low);
  const float hi = static_cast<float>(high);
  const int64_t* idx = indices.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(idx[r] >= 0 && idx[r] < buffer_rows, "gedi_fast: indices[", r, "] = ", idx[r],
                " is outside the buffer's ", buffer_rows, " rows");
  }
  bool* reinit_p = reinit.data_ptr<bool>();
  GEDI_DISPATCH_SAMPLE_TYPES(buffer.scalar_type(), "buffer_draw_cpu", [&] {
    const scalar_t* src = buffer.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const int64_t grain_rows = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, row_numel));
    at::parallel_for(0, rows, grain_rows, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const bool fresh = row_reinitialised(key, counter_offset, static_cast<uint64_t>(r), prob);
        reinit_p[r] = fresh;
        scalar_t* row_out = dst + r * row_numel;
        if (!fresh) {
          std::copy_n(src + idx[r] * row_numel, row_numel, row_out);
          continue;
        }
        Philox4 words{};
        for (int64_t c = 0; c < row_numel; ++c) {
          const uint64_t element = static_cast<uint64_t>(r * row_numel + c);
          if (c == 0 || (element & 3) == 0) words = philox_block(key, counter_offset, element >> 2);
          row_out[c] = static_cast<scalar_t>(uniform_between(words.v[element & 3], lo, hi));
        }
      }
    });
  });
  return {out, reinit};
}

}  // namespace

TORCH_LIBRARY_IMPL(gedi_fast, CPU, m) {
  m.impl("sgld_step_", &sgld_step_cpu);
  m.impl("buffer_draw", &buffer_draw_cpu);
}

}  // namespace gedi_fast
